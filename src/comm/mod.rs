//! Communication between ranks. Algorithm code sees only the [`Comm`] trait: rank, size,
//! all-reduce of a flat buffer, broadcast, gather, all-to-all, barrier and a collective "did
//! everyone succeed?" vote. Every byte collective accepts empty contributions from any rank
//! (or all of them): a rank with nothing to send passes an empty slice. [`Single`] is the one-process implementation used by tests and by
//! workstation runs; [`mpi_comm::MpiComm`] is the only place in the crate that names `mpi::`.

pub mod mpi_comm;
mod partition;

pub use partition::partition;

use crate::error::{Error, Result};

/// Bytes a rank sent or received through each kind of collective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Sent into all-reduces.
    pub all_reduced: u64,
    /// Received from other ranks in gathers (root only).
    pub gathered: u64,
    /// Sent or received in broadcasts.
    pub broadcast: u64,
    /// Sent to other ranks in all-to-all exchanges.
    pub all_to_all: u64,
}

/// What ranks can ask of each other. Every method is collective: all ranks call it, in the
/// same order, or the job deadlocks (the MPI semantics).
pub trait Comm {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum over ranks, result on every rank (statistics are accumulated in f64).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]);
    /// Element-wise sum over ranks of u64 counters.
    fn all_reduce_sum_u64(&self, buf: &mut [u64]);
    /// Element-wise maximum over ranks; a NaN takes part as -inf (so it loses to any number,
    /// and is -inf when every rank has NaN). Result on every rank.
    fn all_reduce_max_f64(&self, buf: &mut [f64]);
    /// Copies `root`'s bytes to every rank (`buf` is resized on the receivers).
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>);
    /// Gathers every rank's bytes on `root` (in rank order); `None` on other ranks. Any
    /// contribution may be empty.
    fn gather_bytes(&self, root: usize, mine: &[u8]) -> Option<Vec<Vec<u8>>>;
    /// Personalised exchange: `send[r]` goes to rank `r` (`send.len()` must be the number of
    /// ranks); returns what every rank sent to this one, in rank order. Any part may be
    /// empty.
    fn all_to_all_bytes(&self, send: &[Vec<u8>]) -> Vec<Vec<u8>>;
    /// Waits until every rank arrives.
    fn barrier(&self);
    /// True on every rank when every rank passed `ok == true`: lets a job that failed on
    /// one rank end on all ranks with a non-zero exit instead of a hang.
    fn all_ok(&self, ok: bool) -> bool {
        let mut v = [u64::from(!ok)];
        self.all_reduce_sum_u64(&mut v);
        v[0] == 0
    }
    /// Bytes this rank has moved through each kind of collective so far (zero for a
    /// communicator that does not count).
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
    /// This rank's index among the ranks on its node (from the shared-memory split of the
    /// communicator; it picks the GPU). Not collective.
    fn node_rank(&self) -> usize {
        0
    }
    /// Number of ranks on this rank's node. Not collective.
    fn node_size(&self) -> usize {
        1
    }
    /// Is this the rank that does serial work (import, export, final writes)?
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// Ends every rank with the same outcome: this rank's error, or [`Error::Peer`] (quiet) when
/// another rank failed. When every rank failed (the same bad input, seen by all), only rank 0
/// reports it, so the user reads one error line. A rank that already knows of a peer's
/// failure ([`Error::Peer`], from an earlier vote) stays quiet in a later one. Algorithm code calls it before a
/// collective that a failing rank would otherwise never reach, so a rank that fails (a bad
/// block of particles, a full disk) ends the job instead of hanging the others.
pub fn agree<T>(comm: &dyn Comm, r: Result<T>) -> Result<T> {
    // [ranks that failed, ranks that failed with their own error (not a peer's)]
    let own = matches!(&r, Err(e) if !matches!(e, Error::Peer));
    let mut failed = [u64::from(r.is_err()), u64::from(own)];
    comm.all_reduce_sum_u64(&mut failed);
    match r {
        Err(Error::Peer) => Err(Error::Peer),
        Err(_) if failed[1] == comm.size() as u64 && !comm.is_root() => Err(Error::Peer),
        Err(e) => Err(e),
        Ok(_) if failed[0] > 0 => Err(Error::Peer),
        Ok(v) => Ok(v),
    }
}

/// Element-wise minimum over ranks (NaN loses to any number); collective.
pub fn all_reduce_min_f64(comm: &dyn Comm, buf: &mut [f64]) {
    buf.iter_mut().for_each(|v| *v = -*v);
    comm.all_reduce_max_f64(buf);
    buf.iter_mut().for_each(|v| *v = -*v);
}

/// The one-process communicator: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) {}
    fn all_reduce_sum_u64(&self, _buf: &mut [u64]) {}
    fn all_reduce_max_f64(&self, buf: &mut [f64]) {
        // As over MPI: a NaN takes part as -inf.
        buf.iter_mut()
            .filter(|v| v.is_nan())
            .for_each(|v| *v = f64::NEG_INFINITY);
    }
    fn broadcast_bytes(&self, _root: usize, _buf: &mut Vec<u8>) {}
    fn gather_bytes(&self, _root: usize, mine: &[u8]) -> Option<Vec<Vec<u8>>> {
        Some(vec![mine.to_vec()])
    }
    fn all_to_all_bytes(&self, send: &[Vec<u8>]) -> Vec<Vec<u8>> {
        assert_eq!(send.len(), 1, "all_to_all_bytes: one part per rank");
        send.to_vec()
    }
    fn barrier(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_is_identity() {
        let c = Single;
        let mut b = vec![1.0, 2.0];
        c.all_reduce_sum_f64(&mut b);
        assert_eq!(b, vec![1.0, 2.0]);
        assert!(c.all_ok(true));
        assert!(!c.all_ok(false));
        assert_eq!(c.gather_bytes(0, b"ab").unwrap(), vec![b"ab".to_vec()]);
        assert_eq!(c.gather_bytes(0, b"").unwrap(), vec![Vec::<u8>::new()]);
        assert_eq!(c.all_to_all_bytes(&[b"x".to_vec()]), vec![b"x".to_vec()]);
        let mut m = [1.0, f64::NAN];
        all_reduce_min_f64(&c, &mut m);
        assert_eq!(m, [1.0, f64::INFINITY]);
    }
}
