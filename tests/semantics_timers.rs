//! SEMANTICS.md §4: timers.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use ringloop::{Error, EventLoop, ManualClock, WaitTimeout};

/// A timer never fires before its deadline (checked against Instant), and
/// the loop wakes for it without busy waiting.
#[test]
fn never_early() {
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        .build()
        .unwrap();
    let fired = log::<(usize, Instant, Instant)>();
    let base = Instant::now();
    for (i, ms) in [7u64, 1, 15, 3, 30, 0].into_iter().enumerate() {
        let at = base + Duration::from_millis(ms);
        let f = fired.clone();
        lp.add_timer_at(at, move |_| f.borrow_mut().push((i, at, Instant::now())))
            .unwrap();
    }
    let f = fired.clone();
    let start = Instant::now();
    lp.add_timer(Duration::from_millis(20), move |_| {
        f.borrow_mut()
            .push((99, start + Duration::from_millis(20), Instant::now()))
    })
    .unwrap();
    lp.run().unwrap();
    let fired = fired.borrow();
    assert_eq!(fired.len(), 7);
    for &(i, at, now) in fired.iter() {
        assert!(now >= at, "timer {i} fired {:?} early", at - now);
    }
    let order: Vec<usize> = fired.iter().map(|f| f.0).collect();
    assert_eq!(order, [5, 1, 3, 0, 2, 99, 4]);
    // One wait per timer at most (plus slack), not a spin.
    assert!(lp.stats().unwrap().iterations < 40, "{:?}", lp.stats());
}

/// Equal deadlines fire in the order added.
#[test]
fn equal_deadlines_fifo() {
    let lp = loop_with_timeout(Duration::from_secs(5));
    let order = log::<usize>();
    let at = Instant::now() + Duration::from_millis(5);
    for i in 0..10 {
        let o = order.clone();
        lp.add_timer_at(at, move |_| o.borrow_mut().push(i))
            .unwrap();
    }
    lp.run().unwrap();
    assert_eq!(*order.borrow(), (0..10).collect::<Vec<_>>());
}

/// "As soon as possible" timers run before all others, in the order added.
#[test]
fn asap_before_others() {
    let lp = nonblocking_loop();
    let order = log::<&str>();
    let past = Instant::now() - Duration::from_secs(1);
    for name in ["past1", "past2"] {
        let o = order.clone();
        lp.add_timer_at(past, move |_| o.borrow_mut().push(name))
            .unwrap();
    }
    for name in ["asap1", "asap2", "asap3"] {
        let o = order.clone();
        lp.add_timer_asap(move |_| o.borrow_mut().push(name))
            .unwrap();
    }
    spin(&lp, 10);
    assert_eq!(
        *order.borrow(),
        ["asap1", "asap2", "asap3", "past1", "past2"]
    );
}

/// A deadline in the past fires on the next iteration.
#[test]
fn past_deadline_fires_next_iteration() {
    let lp = nonblocking_loop();
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    lp.add_timer_at(Instant::now() - Duration::from_secs(3600), move |_| {
        r.set(true)
    })
    .unwrap();
    lp.run_once().unwrap();
    assert!(ran.get());
    let r = ran.clone();
    ran.set(false);
    lp.add_timer(Duration::ZERO, move |_| r.set(true)).unwrap();
    lp.run_once().unwrap();
    assert!(ran.get());
}

/// Cancel: never runs; also from another timer's handler in the same batch
/// of due timers, and from an immediate.
#[test]
fn cancel_means_never_runs() {
    let lp = nonblocking_loop();
    let ran = log::<&str>();
    let r = ran.clone();
    let t = lp
        .add_timer(Duration::ZERO, move |_| r.borrow_mut().push("cancelled"))
        .unwrap();
    lp.cancel_timer(t).unwrap();
    assert!(matches!(lp.cancel_timer(t), Err(Error::NotFound)));

    // Two due timers: the first cancels the second.
    let at = Instant::now() - Duration::from_millis(1);
    let victim = Rc::new(Cell::new(None));
    let (r, v) = (ran.clone(), victim.clone());
    lp.add_timer_at(at, move |lp| {
        r.borrow_mut().push("first");
        lp.cancel_timer(v.take().unwrap()).unwrap();
    })
    .unwrap();
    let r = ran.clone();
    victim.set(Some(
        lp.add_timer_at(at, move |_| r.borrow_mut().push("second"))
            .unwrap(),
    ));
    // An immediate cancels a due timer.
    let r = ran.clone();
    let third = lp
        .add_timer_at(at, move |_| r.borrow_mut().push("third"))
        .unwrap();
    lp.add_immediate(move |lp| lp.cancel_timer(third).unwrap())
        .unwrap();
    spin(&lp, 10);
    assert_eq!(*ran.borrow(), ["first"]);
}

/// A timer cancelling itself from its own handler: it already ran, so the
/// id is stale (NotFound), and nothing breaks.
#[test]
fn cancel_own_timer_from_its_handler() {
    let lp = nonblocking_loop();
    let own = Rc::new(Cell::new(None));
    let result = Rc::new(Cell::new(None));
    let (o, r) = (own.clone(), result.clone());
    own.set(Some(
        lp.add_timer(Duration::ZERO, move |lp| {
            r.set(Some(matches!(
                lp.cancel_timer(o.get().unwrap()),
                Err(Error::NotFound)
            )))
        })
        .unwrap(),
    ));
    spin(&lp, 5);
    assert_eq!(result.get(), Some(true));
    assert!(!lp.has_events().unwrap());
}

/// Updating a deadline moves the timer behind timers with an equal deadline.
#[test]
fn update_moves_behind_equal_deadlines() {
    let lp = loop_with_timeout(Duration::from_secs(5));
    let order = log::<&str>();
    let at = Instant::now() + Duration::from_millis(5);
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let o = order.clone();
        ids.push(
            lp.add_timer_at(at, move |_| o.borrow_mut().push(name))
                .unwrap(),
        );
    }
    lp.update_timer_at(ids[0], at).unwrap();
    lp.run().unwrap();
    assert_eq!(*order.borrow(), ["b", "c", "a"]);

    // update_timer with a relative deadline; the new deadline is reported.
    let o = order.clone();
    let id = lp
        .add_timer(Duration::from_secs(3600), move |_| {
            o.borrow_mut().push("moved")
        })
        .unwrap();
    let before = Instant::now();
    lp.update_timer(id, Duration::from_millis(2)).unwrap();
    let deadline = lp.timer_deadline(id).unwrap();
    assert!(deadline >= before + Duration::from_millis(2));
    assert!(deadline < before + Duration::from_secs(60));
    lp.run().unwrap();
    assert_eq!(order.borrow().last(), Some(&"moved"));
    assert!(Instant::now() >= deadline);
}

/// A timer added from a timer handler never runs in the same iteration.
#[test]
fn timer_added_from_timer_handler_runs_later() {
    let lp = nonblocking_loop();
    let ran = log::<&str>();
    let r = ran.clone();
    lp.add_timer_asap(move |lp| {
        r.borrow_mut().push("outer");
        let r2 = r.clone();
        lp.add_timer_asap(move |_| r2.borrow_mut().push("inner"))
            .unwrap();
        let r3 = r.clone();
        lp.add_timer_at(Instant::now() - Duration::from_secs(1), move |_| {
            r3.borrow_mut().push("past")
        })
        .unwrap();
    })
    .unwrap();
    lp.run_once().unwrap();
    assert_eq!(*ran.borrow(), ["outer"]);
    lp.run_once().unwrap();
    assert_eq!(*ran.borrow(), ["outer", "inner"]);
    lp.run_once().unwrap();
    assert_eq!(*ran.borrow(), ["outer", "inner", "past"]);
}

/// Deadlines too far to represent are an error, not a panic.
#[test]
fn deadline_overflow_is_an_error() {
    let lp = nonblocking_loop();
    assert!(matches!(
        lp.add_timer(Duration::MAX, |_| {}),
        Err(Error::DeadlineOverflow)
    ));
    assert!(matches!(
        lp.add_timer(Duration::from_secs(u64::MAX / 2), |_| {}),
        Err(Error::DeadlineOverflow)
    ));
    let id = lp.add_timer(Duration::from_secs(1), |_| {}).unwrap();
    assert!(matches!(
        lp.update_timer(id, Duration::MAX),
        Err(Error::DeadlineOverflow)
    ));
    // The timer is untouched by the failed update.
    assert!(lp.timer_deadline(id).is_ok());
    if let Some(far) = Instant::now().checked_add(Duration::from_secs(1 << 40)) {
        assert!(matches!(
            lp.add_timer_at(far, |_| {}),
            Err(Error::DeadlineOverflow)
        ));
    }
    lp.cancel_timer(id).unwrap();
    assert!(!lp.has_events().unwrap());
}

/// Timers follow a ManualClock.
#[test]
fn manual_clock_drives_timers() {
    let clock = ManualClock::new();
    let lp = EventLoop::builder()
        .manual_clock(clock.clone())
        .wait_timeout(WaitTimeout::Never)
        .build()
        .unwrap();
    let order = log::<u64>();
    for s in [10u64, 5, 20] {
        let o = order.clone();
        lp.add_timer(Duration::from_secs(s), move |_| o.borrow_mut().push(s))
            .unwrap();
    }
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
    clock.advance(Duration::from_secs(4));
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
    clock.advance(Duration::from_secs(1));
    lp.run_once().unwrap();
    assert_eq!(*order.borrow(), [5]);
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
    clock.advance(Duration::from_secs(100));
    lp.run_once().unwrap();
    lp.run_once().unwrap();
    assert_eq!(*order.borrow(), [5, 10, 20]);
    assert_eq!(clock.elapsed(), Duration::from_secs(105));
    let now = lp.now().unwrap();
    let t = lp.add_timer(Duration::from_secs(1), |_| {}).unwrap();
    assert_eq!(lp.timer_deadline(t).unwrap(), now + Duration::from_secs(1));
}

/// §4 "a deadline in the past fires on the next iteration", also at a
/// manual clock's start (it reads zero): a zero delay or a past instant is
/// due at once, and a 1 ns timer is not early. Found by an audit probe.
#[test]
fn manual_clock_at_zero_fires_due_timers_and_no_early_ones() {
    let clock = ManualClock::new();
    let lp = EventLoop::builder()
        .manual_clock(clock.clone())
        .wait_timeout(WaitTimeout::Never)
        .build()
        .unwrap();
    let fired = log::<&str>();
    let (a, b, c) = (fired.clone(), fired.clone(), fired.clone());
    lp.add_timer(Duration::ZERO, move |_| a.borrow_mut().push("zero"))
        .unwrap();
    let now = lp.now().unwrap();
    lp.add_timer_at(now, move |_| b.borrow_mut().push("now"))
        .unwrap();
    lp.add_timer(Duration::from_nanos(1), move |_| c.borrow_mut().push("1ns"))
        .unwrap();
    for _ in 0..5 {
        let _ = lp.run_once();
    }
    assert_eq!(*fired.borrow(), ["zero", "now"]);
    clock.advance(Duration::from_nanos(1));
    lp.run_once().unwrap();
    assert_eq!(*fired.borrow(), ["zero", "now", "1ns"]);
}

/// A timer due while an fd is always ready still runs (timers come before fds).
#[test]
fn timer_not_starved_by_busy_fd() {
    use std::os::fd::AsRawFd;
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    lp.add_fd(a, ringloop::Interest::READ, |_, _| {}).unwrap();
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let at = Instant::now() + Duration::from_millis(10);
    lp.add_timer_at(at, move |_| r.set(true)).unwrap();
    let start = Instant::now();
    while !ran.get() {
        lp.run_once().unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    assert!(Instant::now() >= at);
}

/// traps.md, tokio#367 (wake-ups batched): timers with one deadline cost
/// one wait between them, not one each.
#[test]
fn equal_deadlines_share_one_wakeup() {
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        .build()
        .unwrap();
    let ran = Rc::new(Cell::new(0));
    let at = Instant::now() + Duration::from_millis(5);
    for _ in 0..100 {
        let r = ran.clone();
        lp.add_timer_at(at, move |_| r.set(r.get() + 1)).unwrap();
    }
    let before = lp.stats().unwrap();
    lp.run().unwrap();
    let after = lp.stats().unwrap();
    assert_eq!(ran.get(), 100);
    // One wait until the deadline; slack for a wake-up the kernel ends a
    // little before it (the loop then waits again, never runs early).
    assert!(after.waits - before.waits <= 3, "{before:?} -> {after:?}");
    assert!(
        after.enters - before.enters <= 3 + after.drains - before.drains,
        "{before:?} -> {after:?}"
    );
}
