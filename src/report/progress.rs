//! A progress line with rate and ETA for long loops, logged at most every few seconds.
//! Only ranks that log at info level (rank 0) print it.

use std::time::{Duration, Instant};

/// Counts work done out of a known total and logs `label: done/total (pct) rate ETA`.
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
    every: Duration,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            label: label.into(),
            total,
            done: 0,
            start: now,
            last: now,
            every: Duration::from_secs(5),
        }
    }
    /// Records `n` more units; logs when the interval has passed or the work is finished.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        let now = Instant::now();
        if now.duration_since(self.last) >= self.every || self.done >= self.total {
            self.last = now;
            log::info!("{}", self.line(now));
        }
    }
    /// The text of the progress line at time `now`.
    pub fn line(&self, now: Instant) -> String {
        let secs = now.duration_since(self.start).as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        let pct = if self.total == 0 {
            100.0
        } else {
            100.0 * self.done as f64 / self.total as f64
        };
        let left = self.total.saturating_sub(self.done) as f64;
        let eta = if rate > 0.0 {
            left / rate
        } else {
            f64::INFINITY
        };
        format!(
            "{}: {}/{} ({pct:.0}%) {rate:.0}/s, ETA {}",
            self.label,
            self.done,
            self.total,
            hms(eta)
        )
    }
}

/// Seconds as h:mm:ss ("?" when unknown).
pub fn hms(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".to_string();
    }
    let s = secs.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_fraction_and_eta() {
        let mut p = Progress::new("import", 100);
        p.every = Duration::from_secs(3600);
        p.inc(25);
        let l = p.line(p.start + Duration::from_secs(10));
        assert_eq!(l, "import: 25/100 (25%) 2/s, ETA 0:00:30");
        assert_eq!(hms(3725.0), "1:02:05");
    }
}
