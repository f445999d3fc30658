//! `emclass comm-check`: exercises every collective of [`Comm`] on the real launcher and
//! checks the results against what they must be, so users (and CI, under `mpirun -n 2/3`)
//! can tell whether the MPI setup works before a long job.

use crate::comm::{partition, Comm};
use crate::error::{Error, Result};

/// Runs the check; Ok on every rank when every collective gave the right answer.
pub fn run(comm: &dyn Comm, particles: usize) -> Result<()> {
    let (rank, size) = (comm.rank(), comm.size());
    let mine = partition(particles, size, rank);
    // All-reduce: particle counts and the sum of owned indices must add up to the totals.
    let mut sums = [mine.len() as f64, mine.clone().map(|i| i as f64).sum::<f64>()];
    comm.all_reduce_sum_f64(&mut sums);
    let want_sum = (particles as f64) * (particles as f64 - 1.0) / 2.0;
    let mut counts = [mine.len() as u64, 1];
    comm.all_reduce_sum_u64(&mut counts);
    let mut problems = Vec::new();
    if sums[0] != particles as f64 || sums[1] != want_sum.max(0.0) {
        problems.push(format!("all-reduce f64 gave {sums:?}"));
    }
    if counts != [particles as u64, size as u64] {
        problems.push(format!("all-reduce u64 gave {counts:?}"));
    }
    // Broadcast: every rank must receive rank 0's message.
    let mut msg = if rank == 0 {
        format!("hello from rank 0 of {size}").into_bytes()
    } else {
        Vec::new()
    };
    comm.broadcast_bytes(0, &mut msg);
    if msg != format!("hello from rank 0 of {size}").into_bytes() {
        problems.push("broadcast gave a different message".to_string());
    }
    // Gather: rank 0 must see every rank's range, in rank order, tiling 0..particles.
    let bytes = format!("{}..{}", mine.start, mine.end).into_bytes();
    if let Some(all) = comm.gather_bytes(0, &bytes) {
        let want: Vec<Vec<u8>> = (0..size)
            .map(|r| {
                let b = partition(particles, size, r);
                format!("{}..{}", b.start, b.end).into_bytes()
            })
            .collect();
        if all != want {
            problems.push("gather gave the wrong ranges".to_string());
        }
    }
    comm.barrier();
    let ok = comm.all_ok(problems.is_empty());
    if !problems.is_empty() {
        return Err(Error::Usage(format!("comm check failed on rank {rank}: {}", problems.join("; "))));
    }
    if !ok {
        return Err(Error::Peer);
    }
    log::info!("rank {rank}: particles {}..{} of {particles}", mine.start, mine.end);
    if comm.is_root() {
        println!("comm check passed on {size} rank(s)");
    }
    Ok(())
}
