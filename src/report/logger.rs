//! A `log` backend that prefixes every line with the elapsed time, the level and the MPI
//! rank. Rank 0 logs at the chosen level; other ranks only log warnings and errors (unless
//! the level is debug or finer), so a 64-rank job prints one readable log.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct RankLogger {
    rank: usize,
    size: usize,
    level: LevelFilter,
    start: Instant,
}

static LOGGER: OnceLock<RankLogger> = OnceLock::new();

/// Installs the logger. `verbosity`: -1 quiet (warnings), 0 info, 1 debug, 2+ trace.
/// Calling it twice keeps the first setting.
pub fn init(rank: usize, size: usize, verbosity: i32) {
    let base = match verbosity {
        i32::MIN..=-1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let level = if rank == 0 || base >= LevelFilter::Debug {
        base
    } else {
        LevelFilter::Warn
    };
    let logger = LOGGER.get_or_init(|| RankLogger {
        rank,
        size,
        level,
        start: Instant::now(),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.level);
    }
}

impl Log for RankLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }
    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = self.start.elapsed().as_secs_f64();
        let lvl = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let rank = if self.size > 1 {
            format!("[rank {}/{}] ", self.rank, self.size)
        } else {
            String::new()
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{t:8.1}s {lvl} {rank}{}", record.args());
    }
    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}
