//! Helpers shared by the benchmarks (not a benchmark itself).
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
    let completions = after.completions - before.completions;
    format!(
        "enters={enters} waits={waits} handlers={handlers} completions={completions} \
         enters_per_event={:.3}",
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

/// Where a two-thread benchmark puts its threads (`-p same|split|none`).
///
/// On a small VM a wake-up that crosses CPUs can cost tens of microseconds
/// (an idle virtual CPU has to be woken), and which placement the scheduler
/// picks changes from run to run. Pinning both threads to one CPU (`same`,
/// the default) measures the loops' own cost; `split` puts them on two CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    /// Both threads on the CPU the program started on.
    Same,
    /// The loop on the CPU the program started on, the other thread on the next one.
    Split,
    /// Let the scheduler decide.
    None,
}

impl Pin {
    /// Parses `-p`.
    pub fn from_args(args: &[String]) -> Pin {
        match flag(args, "-p", String::from("same")).as_str() {
            "same" => Pin::Same,
            "split" => Pin::Split,
            "none" => Pin::None,
            other => {
                eprintln!("-p must be same, split or none, not {other}");
                std::process::exit(2);
            }
        }
    }

    /// The CPU of the loop's thread and of the other thread.
    fn cpus(self) -> Option<(usize, usize)> {
        // SAFETY: plain syscall wrappers without pointers.
        let (cpu, n) = unsafe {
            (
                libc::sched_getcpu(),
                libc::sysconf(libc::_SC_NPROCESSORS_ONLN),
            )
        };
        let (cpu, n) = (cpu.max(0) as usize, n.max(1) as usize);
        match self {
            Pin::Same => Some((cpu, cpu)),
            Pin::Split => Some((cpu, (cpu + 1) % n)),
            Pin::None => None,
        }
    }

    /// Pins the calling (loop) thread; returns the CPU for the other thread.
    pub fn pin_loop(self) -> Option<usize> {
        let (a, b) = self.cpus()?;
        pin_to(a);
        Some(b)
    }
}

/// Pins the calling thread to one CPU (best effort).
pub fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

static OTHER_CPU: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

/// Applies `-p`: pins the calling (loop) thread and remembers where
/// [`pin_other`] puts the other threads.
pub fn pin_setup(pin: Pin) {
    if let Some(cpu) = pin.pin_loop() {
        OTHER_CPU.store(cpu, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Pins the calling (client or pinger) thread as `-p` asked.
pub fn pin_other() {
    let cpu = OTHER_CPU.load(std::sync::atomic::Ordering::Relaxed);
    if cpu != usize::MAX {
        pin_to(cpu);
    }
}
