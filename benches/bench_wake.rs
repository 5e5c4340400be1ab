//! Wake-ups: ringloop against tokio's current-thread runtime.
//!
//! * `wake-rate`: another thread schedules N closures as fast as it can
//!   (ringloop: `Remote::schedule`; tokio: an unbounded mpsc channel read by a
//!   task); closures run per second.
//! * `wake-latency`: ping-pong with another thread; the loop is idle (blocked
//!   in the kernel) each time: schedule a closure, wait for it to answer.
//! * `immediates-chain`: each immediate schedules the next (tokio: a task
//!   calling `yield_now`); `immediates-batch`: N scheduled up front (tokio:
//!   N spawned tasks).
//! * `tasks-spawn`: the futures executor: N tasks spawned up front, each
//!   bumping a counter, then every join handle awaited (ringloop:
//!   `rt::spawn`; tokio: `spawn_local`); `tasks-yield`: one task yielding N
//!   times (`rt::yield_now` against tokio's `yield_now`), the cost of one
//!   wake and one poll.
//!
//! ```text
//! cargo run --release --example bench_wake -- [-n N] [-m PINGS] [-p same|split|none] [-s SECTION]
//! ```
//!
//! `-s` runs one section only (`wake-rate`, `wake-latency`,
//! `immediates-chain`, `immediates-batch`, `tasks-spawn` or `tasks-yield`),
//! which keeps a profile of it clean.

mod common;

use std::cell::Cell;
use std::io;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{flag, percentile, us};
use ringloop::{EventLoop, Handle, WaitTimeout};

thread_local! {
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn bump() {
    COUNT.with(|c| c.set(c.get() + 1));
}

fn count() -> usize {
    COUNT.with(|c| c.get())
}

fn ringloop_loop() -> io::Result<EventLoop> {
    EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        .build()
        .map_err(io::Error::other)
}

fn tokio_rt() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn ringloop_rate(n: usize) -> io::Result<(Duration, String)> {
    let lp = ringloop_loop()?;
    let remote = lp.remote().map_err(io::Error::other)?;
    COUNT.with(|c| c.set(0));
    let before = lp.stats().map_err(io::Error::other)?;
    let t = Instant::now();
    let h = thread::spawn(move || {
        common::pin_other();
        for _ in 0..n {
            remote.schedule(|_| bump()).expect("schedule");
        }
    });
    while count() < n {
        lp.run_once().map_err(io::Error::other)?;
    }
    let el = t.elapsed();
    h.join().expect("sender");
    let after = lp.stats().map_err(io::Error::other)?;
    Ok((el, common::stats_fields(before, after, n as u64)))
}

type Job = Box<dyn FnOnce() + Send>;

fn tokio_rate(n: usize) -> io::Result<Duration> {
    let rt = tokio_rt()?;
    COUNT.with(|c| c.set(0));
    Ok(rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let t = Instant::now();
        let h = thread::spawn(move || {
            common::pin_other();
            for _ in 0..n {
                tx.send(Box::new(bump)).expect("send");
            }
        });
        while count() < n {
            let Some(job) = rx.recv().await else { break };
            job();
        }
        let el = t.elapsed();
        h.join().expect("sender");
        el
    }))
}

fn ringloop_latency(m: usize) -> io::Result<(Vec<Duration>, String)> {
    let lp = ringloop_loop()?;
    let remote = lp.remote().map_err(io::Error::other)?;
    let (tx, rx) = mpsc::channel::<()>();
    let before = lp.stats().map_err(io::Error::other)?;
    let h = thread::spawn(move || {
        common::pin_other();
        let mut times = Vec::with_capacity(m);
        for _ in 0..m {
            // Let the loop go back to sleep in io_uring_enter.
            thread::sleep(Duration::from_micros(50));
            let tx = tx.clone();
            let t = Instant::now();
            remote
                .schedule(move |_| tx.send(()).expect("reply"))
                .expect("schedule");
            rx.recv().expect("reply");
            times.push(t.elapsed());
        }
        times
    });
    // The timeout only bounds how long the loop notices the pinger is done.
    lp.set_wait_timeout(WaitTimeout::After(Duration::from_millis(10)))
        .map_err(io::Error::other)?;
    while !h.is_finished() {
        lp.run_once().map_err(io::Error::other)?;
    }
    let times = h.join().expect("pinger");
    let after = lp.stats().map_err(io::Error::other)?;
    Ok((times, common::stats_fields(before, after, m as u64)))
}

fn tokio_latency(m: usize) -> io::Result<Vec<Duration>> {
    let rt = tokio_rt()?;
    Ok(rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (rtx, rrx) = mpsc::channel::<()>();
        let h = thread::spawn(move || {
            common::pin_other();
            let mut times = Vec::with_capacity(m);
            for _ in 0..m {
                thread::sleep(Duration::from_micros(50));
                let rtx = rtx.clone();
                let t = Instant::now();
                tx.send(Box::new(move || rtx.send(()).expect("reply")))
                    .expect("send");
                rrx.recv().expect("reply");
                times.push(t.elapsed());
            }
            times
        });
        while let Some(job) = rx.recv().await {
            job();
        }
        h.join().expect("pinger")
    }))
}

fn ringloop_chain(n: usize) -> io::Result<(Duration, String)> {
    fn next(lp: &Handle, left: usize) {
        if left > 0 {
            lp.add_immediate(move |lp| next(lp, left - 1))
                .expect("add_immediate");
        }
    }
    let lp = ringloop_loop()?;
    let before = lp.stats().map_err(io::Error::other)?;
    let t = Instant::now();
    next(&lp, n);
    lp.run().map_err(io::Error::other)?;
    let el = t.elapsed();
    let after = lp.stats().map_err(io::Error::other)?;
    Ok((el, common::stats_fields(before, after, n as u64)))
}

fn tokio_chain(n: usize) -> io::Result<Duration> {
    let rt = tokio_rt()?;
    Ok(rt.block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
        t.elapsed()
    }))
}

fn ringloop_batch(n: usize) -> io::Result<(Duration, String)> {
    let lp = ringloop_loop()?;
    COUNT.with(|c| c.set(0));
    let before = lp.stats().map_err(io::Error::other)?;
    let t = Instant::now();
    for _ in 0..n {
        lp.add_immediate(|_| bump()).map_err(io::Error::other)?;
    }
    lp.run().map_err(io::Error::other)?;
    let el = t.elapsed();
    assert_eq!(count(), n);
    let after = lp.stats().map_err(io::Error::other)?;
    Ok((el, common::stats_fields(before, after, n as u64)))
}

fn tokio_batch(n: usize) -> io::Result<Duration> {
    let rt = tokio_rt()?;
    let local = tokio::task::LocalSet::new();
    COUNT.with(|c| c.set(0));
    let el = local.block_on(&rt, async {
        let t = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|_| tokio::task::spawn_local(async { bump() }))
            .collect();
        for h in handles {
            h.await.expect("task");
        }
        t.elapsed()
    });
    assert_eq!(count(), n);
    Ok(el)
}

fn ringloop_runtime() -> io::Result<ringloop::rt::Runtime> {
    ringloop::rt::Runtime::with_loop(ringloop_loop()?).map_err(io::Error::other)
}

fn ringloop_spawn(n: usize) -> io::Result<(Duration, String)> {
    let rt = ringloop_runtime()?;
    let lp = rt.handle();
    COUNT.with(|c| c.set(0));
    let before = lp.stats().map_err(io::Error::other)?;
    let el = rt.block_on(async {
        let t = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|_| ringloop::rt::spawn(async { bump() }))
            .collect();
        for h in handles {
            h.await.expect("task");
        }
        t.elapsed()
    });
    assert_eq!(count(), n);
    let after = lp.stats().map_err(io::Error::other)?;
    Ok((el, common::stats_fields(before, after, n as u64)))
}

fn ringloop_yield(n: usize) -> io::Result<(Duration, String)> {
    let rt = ringloop_runtime()?;
    let lp = rt.handle();
    let before = lp.stats().map_err(io::Error::other)?;
    let el = rt.block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            ringloop::rt::yield_now().await;
        }
        t.elapsed()
    });
    let after = lp.stats().map_err(io::Error::other)?;
    Ok((el, common::stats_fields(before, after, n as u64)))
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pin = common::Pin::from_args(&args);
    common::pin_setup(pin);
    println!("# threads pinned: {pin:?} (-p same|split|none)");
    let n: usize = flag(&args, "-n", 1_000_000);
    let m: usize = flag(&args, "-m", 10_000);
    let section: String = flag(&args, "-s", String::from("all"));
    const SECTIONS: [&str; 7] = [
        "all",
        "wake-rate",
        "wake-latency",
        "immediates-chain",
        "immediates-batch",
        "tasks-spawn",
        "tasks-yield",
    ];
    if !SECTIONS.contains(&section.as_str()) {
        eprintln!("unknown section {section:?}; one of {SECTIONS:?}");
        std::process::exit(2);
    }
    let wanted = |name: &str| section == "all" || section == name;
    if wanted("wake-rate") {
        let r = ringloop_rate(n)?;
        report_rate("wake-rate", "wakes", n, r, tokio_rate(n)?);
    }
    if wanted("wake-latency") {
        wake_latency(m)?;
    }
    if wanted("immediates-chain") {
        let r = ringloop_chain(n)?;
        report_rate("immediates-chain", "immediates", n, r, tokio_chain(n)?);
    }
    if wanted("immediates-batch") {
        let r = ringloop_batch(n)?;
        report_rate("immediates-batch", "immediates", n, r, tokio_batch(n)?);
    }
    if wanted("tasks-spawn") {
        let r = ringloop_spawn(n)?;
        report_rate("tasks-spawn", "tasks", n, r, tokio_batch(n)?);
    }
    if wanted("tasks-yield") {
        let r = ringloop_yield(n)?;
        report_rate("tasks-yield", "yields", n, r, tokio_chain(n)?);
    }
    Ok(())
}

/// Prints a throughput section: each loop's rate, then their ratio.
fn report_rate(section: &str, unit: &str, n: usize, ringloop: (Duration, String), tokio: Duration) {
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (r, stats) = ringloop;
    println!(
        "{section} ringloop {unit}={n} {unit}_per_s={:.0} {stats}",
        rate(r)
    );
    println!("{section} tokio {unit}={n} {unit}_per_s={:.0}", rate(tokio));
    println!(
        "{section} ratio ringloop_vs_tokio={:.2}",
        rate(r) / rate(tokio)
    );
}

fn wake_latency(m: usize) -> io::Result<()> {
    let (mut r, stats) = ringloop_latency(m)?;
    let mut t = tokio_latency(m)?;
    r.sort();
    t.sort();
    for (name, v, s) in [("ringloop", &r, stats.as_str()), ("tokio", &t, "")] {
        println!(
            "wake-latency {name} pings={m} median_us={:.1} p99_us={:.1} {s}",
            us(percentile(v, 50.0)),
            us(percentile(v, 99.0))
        );
    }
    println!(
        "wake-latency ratio ringloop_vs_tokio={:.2} (tokio median / ringloop's)",
        us(percentile(&t, 50.0)) / us(percentile(&r, 50.0))
    );
    Ok(())
}
