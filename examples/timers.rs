//! Timer patterns on ringloop's callback API, in about a second.
//!
//! ```text
//! cargo run --example timers
//! ```
//!
//! Timers are one-shot and run on the monotonic clock, never early
//! (SEMANTICS.md §4). This shows how the usual patterns are built from them:
//! a drift-free periodic tick, a debounce (moving a deadline with
//! `update_timer`), a timeout cancelled because the work finished first,
//! equal deadlines running in the order added, and a loop driven by a
//! [`ManualClock`] for tests, where time moves only when told to.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringloop::{EventLoop, Handle, ManualClock, TimerId, WaitTimeout};

fn main() {
    if let Err(e) = run() {
        eprintln!("timers: {e}");
        std::process::exit(1);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let lp = EventLoop::new()?;
    let start = Instant::now();

    println!("== a periodic tick every 50 ms, scheduled from its deadline so it does not drift");
    let lateness = Rc::new(RefCell::new(Vec::new()));
    tick(&lp, start + Duration::from_millis(50), 1, lateness.clone())?;
    lp.run()?;
    let late = lateness.borrow();
    let worst = late.iter().copied().fold(Duration::ZERO, Duration::max);
    println!(
        "   10 ticks in {:.1} ms (ideal 500); worst lateness {:.3} ms",
        ms(start.elapsed()),
        ms(worst)
    );

    println!("\n== a debounce: each key press moves the deadline 100 ms ahead");
    let begin = Instant::now();
    let fired = Rc::new(Cell::new(None));
    let f = fired.clone();
    let debounce = lp.add_timer(Duration::from_millis(100), move |_| {
        f.set(Some(begin.elapsed()));
    })?;
    press_keys(&lp, debounce, 5, begin)?;
    lp.run()?;
    println!(
        "   5 presses 30 ms apart; the debounced action ran once, at {:.1} ms (last press at 150 ms)",
        ms(fired.get().ok_or("the debounce never fired")?)
    );

    println!("\n== a timeout that is cancelled because the work finished first");
    let timeout = lp.add_timer(Duration::from_millis(200), |_| {
        println!("   timed out (not expected)");
    })?;
    lp.add_timer(Duration::from_millis(20), move |lp| {
        println!("   work done at 20 ms; cancelling the 200 ms timeout");
        lp.cancel_timer(timeout).unwrap();
    })?;
    let begin = Instant::now();
    lp.run()?;
    println!(
        "   the loop ran out of events after {:.1} ms",
        ms(begin.elapsed())
    );

    println!("\n== equal deadlines run in the order added; a past deadline is due at once");
    let at = Instant::now() + Duration::from_millis(10);
    for name in ["first", "second", "third"] {
        lp.add_timer_at(at, move |_| println!("   {name}"))?;
    }
    lp.add_timer_at(Instant::now() - Duration::from_secs(1), |_| {
        println!("   a deadline one second ago: runs first, on the next iteration")
    })?;
    lp.run()?;

    println!("\n== errors, not panics");
    match lp.add_timer(Duration::MAX, |_| {}) {
        Err(e) => println!("   add_timer(Duration::MAX): {e}"),
        Ok(_) => println!("   add_timer(Duration::MAX) was accepted"),
    }

    println!("\n== a manual clock, for tests: an hour passes in no time");
    let clock = ManualClock::new();
    let test_loop = EventLoop::builder()
        .manual_clock(clock.clone())
        .wait_timeout(WaitTimeout::Never)
        .build()?;
    let rang = Rc::new(Cell::new(false));
    let r = rang.clone();
    test_loop.add_timer(Duration::from_secs(3600), move |_| r.set(true))?;
    let _ = test_loop.run_once(); // nothing is due: WouldBlock
    println!("   before advancing: fired = {}", rang.get());
    clock.advance(Duration::from_secs(3600));
    test_loop.run_once()?;
    println!("   after clock.advance(1 h): fired = {}", rang.get());

    println!("\nall done in {:.0} ms", ms(start.elapsed()));
    Ok(())
}

/// Schedules tick `n` at `due`; each tick schedules the next from its own
/// deadline, not from "now", so lateness does not add up.
fn tick(
    lp: &Handle,
    due: Instant,
    n: u32,
    lateness: Rc<RefCell<Vec<Duration>>>,
) -> ringloop::Result<TimerId> {
    lp.add_timer_at(due, move |lp| {
        let late = due.elapsed();
        lateness.borrow_mut().push(late);
        println!("   tick {n:2}, {:.3} ms late", ms(late));
        if n < 10 {
            tick(lp, due + Duration::from_millis(50), n + 1, lateness).unwrap();
        }
    })
}

/// Simulates `left` key presses 30 ms apart, each pushing the debounce back.
fn press_keys(lp: &Handle, debounce: TimerId, left: u32, begin: Instant) -> ringloop::Result<()> {
    if left == 0 {
        return Ok(());
    }
    lp.add_timer(Duration::from_millis(30), move |lp| {
        println!("   key press at {:.1} ms", ms(begin.elapsed()));
        lp.update_timer(debounce, Duration::from_millis(100))
            .unwrap();
        press_keys(lp, debounce, left - 1, begin).unwrap();
    })?;
    Ok(())
}
