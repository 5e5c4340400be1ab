//! Helpers shared by the benchmark examples (not an example itself).
#![allow(dead_code)]

use std::time::Duration;

/// Raises the soft RLIMIT_NOFILE to the hard limit (8000 pairs need 16000 fds).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The median of some durations (sorts them).
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The p-th percentile (0..=100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Microseconds as a float.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Parses `-x VALUE` style flags: returns the value after `flag`, or `default`.
pub fn flag<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    match args.iter().position(|a| a == flag) {
        Some(i) => match args.get(i + 1).map(|v| v.parse()) {
            Some(Ok(v)) => v,
            _ => {
                eprintln!("bad or missing value for {flag}");
                std::process::exit(2);
            }
        },
        None => default,
    }
}

/// A tiny xorshift generator, so benchmarks need no `rand`.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Syscall counters from the loop's own stats, as `key=value` fields.
pub fn stats_fields(before: ringloop::Stats, after: ringloop::Stats, events: u64) -> String {
    let enters = after.enters - before.enters;
    let waits = after.waits - before.waits;
    let handlers = after.handlers - before.handlers;
    format!(
        "enters={enters} waits={waits} handlers={handlers} enters_per_event={:.3}",
        enters as f64 / events.max(1) as f64
    )
}

/// CPU time used so far by the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
