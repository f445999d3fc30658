//! Panics that are caught on purpose: a library that panics instead of returning an error
//! (cudarc on some driver paths) is run inside [`catch`], which turns the panic into a
//! reason string. Under MPI the process-wide panic hook ends every rank on any panic
//! (`comm::mpi_comm::abort_job_on_panic`); it asks [`is_catching`] first and leaves a panic
//! raised inside [`catch`] on this thread to be caught, so `backend: auto` can fall back to
//! the CPU on every rank count.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Keeps the default panic hook (message to stderr) for panics outside [`catch`] and silences
/// it inside (single-process runs; MPI runs install their own hook).
pub fn quiet_when_caught() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_catching() {
            default(info)
        }
    }));
}

/// Whether the current thread is inside [`catch`] (the panic hook then stays quiet).
pub fn is_catching() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Runs `f`; a panic inside it becomes `Err` with the panic's message.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    DEPTH.with(|d| d.set(d.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_the_depth_is_restored() {
        assert!(!is_catching());
        assert_eq!(catch(|| 3).unwrap(), 3);
        let e = catch(|| -> u8 {
            assert!(is_catching());
            panic!("libcuda said no")
        })
        .unwrap_err();
        assert_eq!(e, "libcuda said no");
        assert!(!is_catching());
    }
}
