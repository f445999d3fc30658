//! `emclass comm-check`: exercises every collective of [`Comm`] on the real launcher and
//! checks the results against what they must be, so users (and CI, under `mpirun -n 2/3`)
//! can tell whether the MPI setup works before a long job.

use std::path::Path;

use crate::comm::{partition, Comm};
use crate::dataset::Dataset;
use crate::error::{Error, Result};

/// Runs the check; Ok on every rank when every collective gave the right answer.
pub fn run(comm: &dyn Comm, particles: usize, dataset: Option<&Path>) -> Result<()> {
    collectives(comm, particles)?;
    if let Some(path) = dataset {
        partitioned_reads(comm, path)?;
    }
    if comm.is_root() {
        println!("comm check passed on {} rank(s)", comm.size());
    }
    Ok(())
}

fn collectives(comm: &dyn Comm, particles: usize) -> Result<()> {
    let (rank, size) = (comm.rank(), comm.size());
    let mine = partition(particles, size, rank);
    // All-reduce: particle counts and the sum of owned indices must add up to the totals.
    let mut sums = [
        mine.len() as f64,
        mine.clone().map(|i| i as f64).sum::<f64>(),
    ];
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
    empty_contributions(comm, &mut problems);
    comm.barrier();
    let ok = comm.all_ok(problems.is_empty());
    if !problems.is_empty() {
        return Err(Error::Internal(format!(
            "comm check failed on rank {rank}: {}",
            problems.join("; ")
        )));
    }
    if !ok {
        return Err(Error::Peer);
    }
    log::info!(
        "rank {rank}: particles {}..{} of {particles}",
        mine.start,
        mine.end
    );
    Ok(())
}

/// The collectives with empty parts: every rank empty, some ranks empty, an empty
/// all-reduce, and an all-to-all where rank r sends r·s + d bytes (d, s = 0 included) to rank s.
fn empty_contributions(comm: &dyn Comm, problems: &mut Vec<String>) {
    let (rank, size) = (comm.rank(), comm.size());
    if let Some(all) = comm.gather_bytes(0, &[]) {
        if all != vec![Vec::<u8>::new(); size] {
            problems.push("gather of empty parts gave data".into());
        }
    }
    let odd: Vec<u8> = if rank % 2 == 1 {
        vec![rank as u8; rank]
    } else {
        Vec::new()
    };
    if let Some(all) = comm.gather_bytes(0, &odd) {
        let want: Vec<Vec<u8>> = (0..size)
            .map(|r| {
                if r % 2 == 1 {
                    vec![r as u8; r]
                } else {
                    Vec::new()
                }
            })
            .collect();
        if all != want {
            problems.push("gather with some empty parts gave the wrong parts".into());
        }
    }
    comm.all_reduce_sum_f64(&mut []);
    comm.all_reduce_sum_u64(&mut []);
    let mut max = [
        rank as f64,
        if rank == 0 { f64::NAN } else { -(rank as f64) },
    ];
    comm.all_reduce_max_f64(&mut max);
    let want_second = if size == 1 { f64::NEG_INFINITY } else { -1.0 };
    if max != [(size - 1) as f64, want_second] {
        problems.push(format!("all-reduce max gave {max:?}"));
    }
    let bytes_for = |from: usize, to: usize| vec![(from * 16 + to) as u8; from * to];
    let send: Vec<Vec<u8>> = (0..size).map(|to| bytes_for(rank, to)).collect();
    let got = comm.all_to_all_bytes(&send);
    let want: Vec<Vec<u8>> = (0..size).map(|from| bytes_for(from, rank)).collect();
    if got != want {
        problems.push("all-to-all with empty parts gave the wrong parts".into());
    }
    let none = comm.all_to_all_bytes(&vec![Vec::new(); size]);
    if none != vec![Vec::<u8>::new(); size] {
        problems.push("all-to-all of empty parts gave data".into());
    }
}

/// Per-rank totals of a block of particles: count, sum of pixels, sum of squared pixels,
/// and the uids folded into two f64-exact halves.
fn totals(ds: &Dataset, rows: std::ops::Range<usize>) -> Result<[f64; 5]> {
    let mut t = [0.0; 5];
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + 256).min(rows.end);
        let images = ds.read_images(start..end)?;
        t[0] += (end - start) as f64;
        t[1] += images.iter().map(|&v| f64::from(v)).sum::<f64>();
        t[2] += images
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>();
        start = end;
    }
    for &u in &ds.table().uid()[rows.start..rows.end] {
        t[3] += (u >> 40) as f64;
        t[4] += (u & ((1 << 40) - 1)) as f64;
    }
    Ok(t)
}

/// Every rank opens only its hyperslab of `path`; the sums over ranks must match a serial
/// read of the whole file on rank 0.
fn partitioned_reads(comm: &dyn Comm, path: &Path) -> Result<()> {
    let n = Dataset::count(path)?;
    let mine = partition(n, comm.size(), comm.rank());
    let local = Dataset::open_range(path, mine.clone()).and_then(|ds| {
        let len = ds.len();
        totals(&ds, 0..len)
    });
    if !comm.all_ok(local.is_ok()) {
        return local.map(|_| ()).and(Err(Error::Peer));
    }
    let mut sums = local?.to_vec();
    comm.all_reduce_sum_f64(&mut sums);
    let ok = if comm.is_root() {
        let whole = Dataset::open(path)?;
        let serial = totals(&whole, 0..n)?;
        let close = sums
            .iter()
            .zip(&serial)
            .all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs().max(1.0));
        if !close {
            log::error!("partitioned totals {sums:?} differ from the serial read {serial:?}");
        }
        close
    } else {
        true
    };
    if !comm.all_ok(ok) {
        return Err(if comm.is_root() {
            Error::file(
                path,
                "reads partitioned over ranks differ from a serial read",
            )
        } else {
            Error::Peer
        });
    }
    log::info!(
        "rank {}: read particles {}..{} of {n} from {}",
        comm.rank(),
        mine.start,
        mine.end,
        path.display()
    );
    Ok(())
}
