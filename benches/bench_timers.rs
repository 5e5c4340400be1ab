//! Timers: ringloop against tokio's current-thread runtime.
//!
//! `ringloop` is the callback API (add_timer with a closure); `ringloop-async`
//! and `tokio` spawn one task per timer that awaits a sleep (cancel: a sleep
//! polled once, then dropped).
//!
//! * `timers-fire`: add N timers (deadlines spread over 0..1 ms), run until all fired.
//! * `timers-cancel`: add N timers (10 s away) and cancel each right after adding it.
//! * `timers-lateness`: L timers with random 1..10 ms deadlines; how late each
//!   fired (median, p99, max) and how many fired early (must be 0).
//!
//! ```text
//! cargo run --release --example bench_timers -- [-n N] [-l L]
//! ```

mod common;

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{Rng, flag, percentile, us};

fn ringloop_loop() -> io::Result<ringloop::EventLoop> {
    ringloop::EventLoop::builder()
        .wait_timeout(ringloop::WaitTimeout::Forever)
        .build()
        .map_err(io::Error::other)
}

fn ringloop_fire(n: usize) -> io::Result<(Duration, String)> {
    let lp = ringloop_loop()?;
    let fired = Rc::new(Cell::new(0usize));
    let before = lp.stats().map_err(io::Error::other)?;
    let t = Instant::now();
    for i in 0..n {
        let f = fired.clone();
        let after = Duration::from_nanos((i % 1000) as u64 * 1000);
        lp.add_timer(after, move |_| f.set(f.get() + 1))
            .map_err(io::Error::other)?;
    }
    lp.run().map_err(io::Error::other)?;
    let el = t.elapsed();
    assert_eq!(fired.get(), n);
    let after = lp.stats().map_err(io::Error::other)?;
    Ok((el, common::stats_fields(before, after, n as u64)))
}

fn ringloop_cancel(n: usize) -> io::Result<(Duration, String)> {
    let lp = ringloop_loop()?;
    let before = lp.stats().map_err(io::Error::other)?;
    let t = Instant::now();
    for _ in 0..n {
        let id = lp
            .add_timer(Duration::from_secs(10), |_| panic!("cancelled timer ran"))
            .map_err(io::Error::other)?;
        lp.cancel_timer(id).map_err(io::Error::other)?;
    }
    let el = t.elapsed();
    let after = lp.stats().map_err(io::Error::other)?;
    Ok((el, common::stats_fields(before, after, n as u64)))
}

/// Lateness of each timer (negative = early), in ns.
fn ringloop_lateness(deadlines: &[Duration]) -> io::Result<(Vec<i64>, String)> {
    let lp = ringloop_loop()?;
    let late = Rc::new(RefCell::new(Vec::new()));
    let before = lp.stats().map_err(io::Error::other)?;
    let start = Instant::now();
    for &d in deadlines {
        let late = late.clone();
        let at = start + d;
        lp.add_timer_at(at, move |_| {
            let now = Instant::now();
            let ns = if now >= at {
                (now - at).as_nanos() as i64
            } else {
                -((at - now).as_nanos() as i64)
            };
            late.borrow_mut().push(ns);
        })
        .map_err(io::Error::other)?;
    }
    lp.run().map_err(io::Error::other)?;
    let after = lp.stats().map_err(io::Error::other)?;
    let v = late.borrow().clone();
    Ok((
        v,
        common::stats_fields(before, after, deadlines.len() as u64),
    ))
}

fn async_rt() -> io::Result<ringloop::rt::Runtime> {
    ringloop::rt::Runtime::with_loop(ringloop_loop()?).map_err(io::Error::other)
}

fn async_fire(n: usize) -> io::Result<Duration> {
    use ringloop::{rt, time};
    let rt = async_rt()?;
    let fired = Rc::new(Cell::new(0usize));
    let el = rt.block_on(async {
        let t = Instant::now();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let f = fired.clone();
            let after = Duration::from_nanos((i % 1000) as u64 * 1000);
            handles.push(rt::spawn(async move {
                time::sleep(after).await;
                f.set(f.get() + 1);
            }));
        }
        for h in handles {
            h.await.expect("task");
        }
        t.elapsed()
    });
    assert_eq!(fired.get(), n);
    Ok(el)
}

fn async_cancel(n: usize) -> io::Result<Duration> {
    use std::future::Future;
    use std::task::{Context, Poll};
    let rt = async_rt()?;
    Ok(rt.block_on(async {
        let t = Instant::now();
        std::future::poll_fn(|cx: &mut Context<'_>| {
            for _ in 0..n {
                // Poll once (registering the timer), then drop (cancelling it).
                let mut s = std::pin::pin!(ringloop::time::sleep(Duration::from_secs(10)));
                assert!(s.as_mut().poll(cx).is_pending(), "cancelled timer ran");
            }
            Poll::Ready(())
        })
        .await;
        t.elapsed()
    }))
}

fn async_lateness(deadlines: &[Duration]) -> io::Result<Vec<i64>> {
    use ringloop::{rt, time};
    let rt = async_rt()?;
    let late = Rc::new(RefCell::new(Vec::new()));
    rt.block_on(async {
        let start = Instant::now();
        let mut handles = Vec::new();
        for &d in deadlines {
            let late = late.clone();
            let at = start + d;
            handles.push(rt::spawn(async move {
                time::sleep_until(at).await;
                let now = Instant::now();
                let ns = if now >= at {
                    (now - at).as_nanos() as i64
                } else {
                    -((at - now).as_nanos() as i64)
                };
                late.borrow_mut().push(ns);
            }));
        }
        for h in handles {
            h.await.expect("task");
        }
    });
    let v = late.borrow().clone();
    Ok(v)
}

fn tokio_rt() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn tokio_fire(n: usize) -> io::Result<Duration> {
    let rt = tokio_rt()?;
    let local = tokio::task::LocalSet::new();
    let fired = Rc::new(Cell::new(0usize));
    let el = local.block_on(&rt, async {
        let t = Instant::now();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let f = fired.clone();
            let after = Duration::from_nanos((i % 1000) as u64 * 1000);
            handles.push(tokio::task::spawn_local(async move {
                tokio::time::sleep(after).await;
                f.set(f.get() + 1);
            }));
        }
        for h in handles {
            h.await.expect("task");
        }
        t.elapsed()
    });
    assert_eq!(fired.get(), n);
    Ok(el)
}

fn tokio_cancel(n: usize) -> io::Result<Duration> {
    let rt = tokio_rt()?;
    Ok(rt.block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            // `biased` polls the sleep first (registering it with the timer
            // wheel), then the ready branch wins and the sleep is dropped,
            // which cancels it.
            tokio::select! {
                biased;
                _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("cancelled timer ran"),
                _ = std::future::ready(()) => {}
            }
        }
        t.elapsed()
    }))
}

fn tokio_lateness(deadlines: &[Duration]) -> io::Result<Vec<i64>> {
    let rt = tokio_rt()?;
    let local = tokio::task::LocalSet::new();
    let late = Rc::new(RefCell::new(Vec::new()));
    local.block_on(&rt, async {
        let start = Instant::now();
        let mut handles = Vec::new();
        for &d in deadlines {
            let late = late.clone();
            let at = start + d;
            handles.push(tokio::task::spawn_local(async move {
                tokio::time::sleep_until(at.into()).await;
                let now = Instant::now();
                let ns = if now >= at {
                    (now - at).as_nanos() as i64
                } else {
                    -((at - now).as_nanos() as i64)
                };
                late.borrow_mut().push(ns);
            }));
        }
        for h in handles {
            h.await.expect("task");
        }
    });
    let v = late.borrow().clone();
    Ok(v)
}

fn report_lateness(name: &str, mut v: Vec<i64>, stats: &str) -> f64 {
    v.sort();
    let early = v.iter().filter(|&&x| x < 0).count();
    let d: Vec<Duration> = v
        .iter()
        .map(|&x| Duration::from_nanos(x.max(0) as u64))
        .collect();
    let med = percentile(&d, 50.0);
    println!(
        "timers-lateness {name} timers={} median_us={:.1} p99_us={:.1} max_us={:.1} early={early} {stats}",
        v.len(),
        us(med),
        us(percentile(&d, 99.0)),
        us(*d.last().unwrap_or(&Duration::ZERO)),
    );
    us(med)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = flag(&args, "-n", 1_000_000);
    let l: usize = flag(&args, "-l", 1000);

    let (rf, stats) = ringloop_fire(n)?;
    let tf = tokio_fire(n)?;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "timers-fire ringloop timers={n} timers_per_s={:.0} {stats}",
        rate(rf)
    );
    let af = async_fire(n)?;
    println!(
        "timers-fire ringloop-async timers={n} timers_per_s={:.0}",
        rate(af)
    );
    println!("timers-fire tokio timers={n} timers_per_s={:.0}", rate(tf));
    println!(
        "timers-fire ratio ringloop_vs_tokio={:.2} ringloop-async_vs_tokio={:.2}",
        rate(rf) / rate(tf),
        rate(af) / rate(tf)
    );

    let (rc, stats) = ringloop_cancel(n)?;
    let tc = tokio_cancel(n)?;
    println!(
        "timers-cancel ringloop timers={n} timers_per_s={:.0} {stats}",
        rate(rc)
    );
    let ac = async_cancel(n)?;
    println!(
        "timers-cancel ringloop-async timers={n} timers_per_s={:.0}",
        rate(ac)
    );
    println!(
        "timers-cancel tokio timers={n} timers_per_s={:.0}",
        rate(tc)
    );
    println!(
        "timers-cancel ratio ringloop_vs_tokio={:.2} ringloop-async_vs_tokio={:.2}",
        rate(rc) / rate(tc),
        rate(ac) / rate(tc)
    );

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let deadlines: Vec<Duration> = (0..l)
        .map(|_| Duration::from_micros(1000 + rng.next() % 9000))
        .collect();
    let (rl, stats) = ringloop_lateness(&deadlines)?;
    let r_med = report_lateness("ringloop", rl, &stats);
    report_lateness("ringloop-async", async_lateness(&deadlines)?, "");
    let t_med = report_lateness("tokio", tokio_lateness(&deadlines)?, "");
    println!(
        "timers-lateness ratio ringloop_vs_tokio={:.2} (tokio median lateness / ringloop's)",
        t_med / r_med.max(0.001)
    );
    Ok(())
}
