//! SEMANTICS.md §1: one iteration.

mod common;

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use ringloop::{Error, EventLoop, Interest, WaitTimeout};

/// §1.1: signals, then one immediate, else one due timer, else one fd.
#[test]
fn dispatch_order_signal_immediate_timer_fd() {
    let lp = nonblocking_loop();
    let order = log::<&str>();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let o = order.clone();
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        o.borrow_mut().push("fd");
        lp.remove_fd(ev.id).unwrap();
    })
    .unwrap();
    let o = order.clone();
    lp.add_timer_at(Instant::now() - Duration::from_millis(5), move |_| {
        o.borrow_mut().push("timer")
    })
    .unwrap();
    let o = order.clone();
    lp.add_immediate(move |_| o.borrow_mut().push("immediate"))
        .unwrap();
    let sig = libc::SIGRTMIN() + 1;
    let o = order.clone();
    let sid = lp
        .add_signal(sig, move |_, _| o.borrow_mut().push("signal"))
        .unwrap();
    signal_this_thread(sig);

    for expected in ["signal", "immediate", "timer", "fd"] {
        let before = order.borrow().len();
        lp.run_once().unwrap();
        assert_eq!(
            order.borrow().len(),
            before + 1,
            "one handler per iteration"
        );
        assert_eq!(
            *order.borrow().last().unwrap(),
            expected,
            "{:?}",
            order.borrow()
        );
    }
    lp.remove_signal(sid).unwrap();
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
    assert!(!lp.has_events().unwrap());
}

/// §1.1: with both an immediate and a due timer, only the immediate runs in
/// the first iteration; the fd waits for both.
#[test]
fn immediate_and_timer_before_ready_fd() {
    let lp = nonblocking_loop();
    let order = log::<&str>();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let o = order.clone();
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        o.borrow_mut().push("fd");
        lp.remove_fd(ev.id).unwrap();
    })
    .unwrap();
    // Let the fd's readiness reach the loop first.
    assert!(matches!(lp.run_once(), Ok(())));
    assert_eq!(*order.borrow(), ["fd"]);
    order.borrow_mut().clear();

    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let o = order.clone();
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        o.borrow_mut().push("fd");
        lp.remove_fd(ev.id).unwrap();
    })
    .unwrap();
    let o = order.clone();
    lp.add_timer_asap(move |_| o.borrow_mut().push("timer"))
        .unwrap();
    let o = order.clone();
    lp.add_immediate(move |_| o.borrow_mut().push("immediate"))
        .unwrap();
    lp.run_once().unwrap();
    assert_eq!(*order.borrow(), ["immediate"]);
    lp.run_once().unwrap();
    assert_eq!(*order.borrow(), ["immediate", "timer"]);
    lp.run_once().unwrap();
    assert_eq!(*order.borrow(), ["immediate", "timer", "fd"]);
}

/// §1.2: a handler that removes another ready watch: the removed one never runs.
#[test]
fn handler_removing_another_ready_watch_prevents_its_dispatch() {
    let lp = nonblocking_loop();
    let ran = log::<usize>();
    let ids = Rc::new(std::cell::RefCell::new(Vec::<ringloop::FdId>::new()));
    let mut peers = Vec::new();
    for i in 0..3 {
        let (a, b) = socketpair();
        write_fd(b.as_raw_fd(), b"x").unwrap();
        peers.push(b);
        let (r, all) = (ran.clone(), ids.clone());
        let id = lp
            .add_fd(a, Interest::READ, move |lp, _| {
                r.borrow_mut().push(i);
                // Remove every watch, this one included.
                for id in all.borrow_mut().drain(..) {
                    lp.remove_fd(id).unwrap();
                }
            })
            .unwrap();
        ids.borrow_mut().push(id);
    }
    // Let the kernel report all three ready before the first dispatch.
    assert_eq!(lp.stats().unwrap().handlers, 0);
    spin(&lp, 10);
    assert_eq!(ran.borrow().len(), 1, "only one ran: {:?}", ran.borrow());
    assert_eq!(lp.stats().unwrap().handlers, 1);
    assert!(!lp.has_events().unwrap());
    for b in &peers {
        assert!(peer_closed(b.as_raw_fd()));
    }
}

/// §1.2: changing another ready watch's interest to empty stops its dispatch.
#[test]
fn handler_emptying_another_ready_watch_interest_prevents_its_dispatch() {
    let lp = nonblocking_loop();
    let ran = log::<usize>();
    let mut ids = Vec::new();
    let all = Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut keep = Vec::new();
    for i in 0..4 {
        let (a, b) = socketpair();
        write_fd(b.as_raw_fd(), b"x").unwrap();
        keep.push(b);
        let (r, all) = (ran.clone(), all.clone());
        ids.push(
            lp.add_fd(a, Interest::READ, move |lp, _| {
                r.borrow_mut().push(i);
                for &id in all.borrow().iter() {
                    lp.set_interest(id, Interest::NONE).unwrap();
                }
            })
            .unwrap(),
        );
    }
    *all.borrow_mut() = ids.clone();
    spin(&lp, 20);
    assert_eq!(ran.borrow().len(), 1, "{:?}", ran.borrow());
    for id in ids {
        assert_eq!(lp.interest(id).unwrap(), Interest::NONE);
    }
    assert!(
        !lp.has_events().unwrap(),
        "empty interest keeps nothing alive"
    );
}

/// §1.4: "never block" with nothing to do reports WouldBlock.
#[test]
fn never_block_reports_would_block() {
    let lp = nonblocking_loop();
    let start = Instant::now();
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
    // A watch that is not ready does not change that.
    let (a, _b) = socketpair();
    lp.add_fd(a, Interest::READ, |_, _| panic!("not ready"))
        .unwrap();
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
    // Nor does a timer that is not due.
    lp.add_timer(Duration::from_secs(60), |_| panic!("not due"))
        .unwrap();
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
    assert!(start.elapsed() < Duration::from_secs(5));
    // Something that runs is success.
    lp.add_immediate(|_| {}).unwrap();
    assert!(lp.run_once().is_ok());
}

/// §1.4: with nothing registered an iteration waits for the wait timeout.
#[test]
fn idle_iteration_waits_for_the_timeout() {
    let d = Duration::from_millis(50);
    let lp = loop_with_timeout(d);
    let start = Instant::now();
    lp.run_once().unwrap();
    let took = start.elapsed();
    assert!(took >= d, "returned early: {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(lp.stats().unwrap().handlers, 0);

    lp.set_wait_timeout(WaitTimeout::After(Duration::from_millis(20)))
        .unwrap();
    let start = Instant::now();
    lp.run_once().unwrap();
    assert!(start.elapsed() >= Duration::from_millis(20));
}

/// §1.5: run_once inside a handler is an error unless nesting is allowed.
#[test]
fn nested_run_once_is_an_error_unless_allowed() {
    let lp = nonblocking_loop();
    let result = Rc::new(Cell::new(None));
    let r = result.clone();
    lp.add_immediate(move |lp| r.set(Some(matches!(lp.run_once(), Err(Error::Nested)))))
        .unwrap();
    lp.run_once().unwrap();
    assert_eq!(result.get(), Some(true));
    // `run` inside a handler too.
    let r = result.clone();
    lp.add_immediate(move |lp| r.set(Some(matches!(lp.run(), Err(Error::Nested)))))
        .unwrap();
    lp.run_once().unwrap();
    assert_eq!(result.get(), Some(true));

    // Allowed: the inner iteration runs the next event.
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Never)
        .allow_nesting(true)
        .build()
        .unwrap();
    let order = log::<&str>();
    let o = order.clone();
    lp.add_immediate(move |lp| {
        o.borrow_mut().push("outer start");
        assert!(lp.run_once().is_ok());
        o.borrow_mut().push("outer end");
    })
    .unwrap();
    let o = order.clone();
    lp.add_immediate(move |_| o.borrow_mut().push("inner"))
        .unwrap();
    lp.run_once().unwrap();
    assert_eq!(*order.borrow(), ["outer start", "inner", "outer end"]);
    // Toggling at run time.
    lp.set_allow_nesting(false);
    let r = result.clone();
    result.set(None);
    lp.add_immediate(move |lp| r.set(Some(matches!(lp.run_once(), Err(Error::Nested)))))
        .unwrap();
    lp.run_once().unwrap();
    assert_eq!(result.get(), Some(true));
}

/// §1.5 with nesting: an fd handler that runs the loop again is not called
/// recursively for its own (still ready) fd, and runs again afterwards.
#[test]
fn nested_iteration_does_not_recurse_into_running_fd_handler() {
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Never)
        .allow_nesting(true)
        .build()
        .unwrap();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let depth = Rc::new(Cell::new(0));
    let calls = Rc::new(Cell::new(0));
    let (d, c) = (depth.clone(), calls.clone());
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        assert_eq!(d.get(), 0, "fd handler re-entered");
        c.set(c.get() + 1);
        d.set(1);
        let _ = lp.run_once();
        let _ = lp.run_once();
        d.set(0);
        if c.get() == 3 {
            lp.remove_fd(ev.id).unwrap();
        }
    })
    .unwrap();
    spin(&lp, 10);
    assert_eq!(calls.get(), 3);
}

/// §1.5 with nesting, for operations: while a multishot operation's
/// callback runs nested iterations, its own next completion waits for it to
/// return, and the events behind that completion still run (it used to block
/// every one of them). Found by an audit probe.
#[test]
fn nested_iteration_runs_what_waits_behind_a_running_op_callback() {
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Never)
        .allow_nesting(true)
        .build()
        .unwrap();
    // SAFETY: plain syscall; the fd is owned right away.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(efd >= 0);
    // SAFETY: `efd` is a fresh fd nobody else owns.
    let efd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) };
    let raw = efd.as_raw_fd();
    let poke = move || {
        // SAFETY: writes 8 bytes from a local to an eventfd.
        let n = unsafe { libc::write(raw, 1u64.to_ne_bytes().as_ptr().cast(), 8) };
        assert_eq!(n, 8);
    };
    let (a, b) = socketpair();
    let fd_ran = Rc::new(Cell::new(false));
    let f = fd_ran.clone();
    lp.add_fd(a, Interest::READ, move |_, _| f.set(true))
        .unwrap();
    let calls = Rc::new(Cell::new(0));
    let seen_in_nested = Rc::new(Cell::new(None));
    let (c, f, seen) = (calls.clone(), fd_ran.clone(), seen_in_nested.clone());
    let entry = io_uring::opcode::PollAdd::new(io_uring::types::Fd(raw), libc::POLLIN as u32)
        .multi(true)
        .build();
    // SAFETY: POLL_ADD points at no memory; `efd` outlives the loop's use.
    let op = unsafe {
        lp.submit_multishot(entry, move |h, _| {
            c.set(c.get() + 1);
            if c.get() > 1 {
                return;
            }
            // A second completion of this operation, then a ready fd behind it.
            poke();
            write_fd(b.as_raw_fd(), b"x").unwrap();
            for _ in 0..200 {
                if f.get() {
                    break;
                }
                let _ = h.run_once();
            }
            seen.set(Some((f.get(), c.get())));
        })
    }
    .unwrap();
    poke();
    for _ in 0..200 {
        if calls.get() >= 2 {
            break;
        }
        let _ = lp.run_once();
    }
    assert_eq!(
        seen_in_nested.get(),
        Some((true, 1)),
        "the fd ran in a nested iteration, the callback was not re-entered"
    );
    assert_eq!(
        calls.get(),
        2,
        "the waiting completion ran after it returned"
    );
    lp.cancel_op(op).unwrap();
    drop(efd);
}

/// §1.6: `run` returns when nothing is left; an empty-interest watch does not
/// keep it running.
#[test]
fn run_returns_when_nothing_is_left() {
    let lp = loop_with_timeout(Duration::from_secs(10));
    let (a, _b) = socketpair();
    let id = lp
        .add_fd(a, Interest::NONE, |_, _| panic!("not monitored"))
        .unwrap();
    let start = Instant::now();
    lp.run().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));

    // A watch that empties its own interest ends `run`.
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        c.set(c.get() + 1);
        lp.set_interest(ev.id, Interest::NONE).unwrap();
    })
    .unwrap();
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    lp.add_timer(Duration::from_millis(10), move |_| r.set(r.get() + 1))
        .unwrap();
    let r = ran.clone();
    lp.add_immediate(move |_| r.set(r.get() + 1)).unwrap();
    let start = Instant::now();
    lp.run().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(calls.get(), 1);
    assert_eq!(ran.get(), 2);
    assert!(!lp.has_events().unwrap());
    lp.remove_fd(id).unwrap();
}

fn round_robin_check(log: &[usize], n: usize, rounds: usize) {
    assert_eq!(log.len(), n * rounds, "{log:?}");
    for (r, chunk) in log.chunks(n).enumerate() {
        let mut sorted = chunk.to_vec();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..n).collect::<Vec<_>>(),
            "round {r} is not a permutation: {log:?}"
        );
    }
}

/// §1.7: several ready watches on different fds run round robin.
#[test]
fn fairness_round_robin_across_fds() {
    let lp = nonblocking_loop();
    let ran = log::<usize>();
    let n = 5;
    let mut peers = Vec::new();
    for i in 0..n {
        let (a, b) = socketpair();
        write_fd(b.as_raw_fd(), b"data").unwrap();
        peers.push(b);
        let r = ran.clone();
        lp.add_fd(a, Interest::READ, move |_, ev| {
            assert_eq!(ev.ready, Interest::READ);
            r.borrow_mut().push(i);
        })
        .unwrap();
    }
    for _ in 0..n * 4 {
        lp.run_once().unwrap();
    }
    round_robin_check(&ran.borrow(), n, 4);
}

/// §1.7: several watches on the same fd run round robin too.
#[test]
fn fairness_round_robin_on_one_fd() {
    let lp = nonblocking_loop();
    let ran = log::<usize>();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"data").unwrap();
    let raw = a.as_raw_fd();
    let r = ran.clone();
    lp.add_fd(a, Interest::READ, move |_, _| r.borrow_mut().push(0))
        .unwrap();
    for i in 1..4 {
        let r = ran.clone();
        // SAFETY: `raw` is owned by the first watch, which outlives these
        // (all are dropped with the loop).
        unsafe {
            lp.add_raw_fd(raw, Interest::READ, move |_, _| r.borrow_mut().push(i))
                .unwrap();
        }
    }
    for _ in 0..4 * 3 {
        lp.run_once().unwrap();
    }
    round_robin_check(&ran.borrow(), 4, 3);
}

/// §1.7 when one wait brings more completions than the kernel posts per
/// `io_uring_enter`: with DEFER_TASKRUN (6.13 and later) it runs at most
/// 2 x 20 deferred items (here: edge watches' multishot polls armed on
/// ready fds) per call and keeps the rest for the next one, while a level
/// watch's re-arm completes
/// inline at submission. Unless the loop collects the rest before it
/// dispatches, the level watches run twice before the last edge watches
/// run once (found by the `ops_vs_model` fuzz target).
#[test]
fn fairness_holds_when_a_wait_brings_a_long_batch() {
    let lp = nonblocking_loop();
    let ran = log::<usize>();
    let (edge, level) = (100, 5);
    let mut peers = Vec::new();
    for i in 0..edge + level {
        let (a, b) = socketpair();
        write_fd(b.as_raw_fd(), b"data").unwrap();
        peers.push(b);
        let interest = if i < edge {
            Interest::READ | Interest::EDGE
        } else {
            Interest::READ
        };
        let r = ran.clone();
        lp.add_fd(a, interest, move |_, _| r.borrow_mut().push(i))
            .unwrap();
    }
    for _ in 0..edge + 2 * level {
        lp.run_once().unwrap();
    }
    let log = ran.borrow();
    let mut first: Vec<usize> = log[..edge + level].to_vec();
    first.sort();
    assert_eq!(
        first,
        (0..edge + level).collect::<Vec<_>>(),
        "a watch ran twice before every ready watch ran once: {log:?}"
    );
    let mut second: Vec<usize> = log[edge + level..].to_vec();
    second.sort();
    assert_eq!(second, (edge..edge + level).collect::<Vec<_>>(), "{log:?}");
}

/// §1.3: no blocking while an immediate is scheduled or a timer is due, even
/// with a "forever" wait timeout.
#[test]
fn no_blocking_while_work_is_due() {
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        .build()
        .unwrap();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    lp.add_fd(a, Interest::READ, |lp, ev| {
        lp.remove_fd(ev.id).unwrap();
        lp.add_immediate(|lp| {
            lp.add_timer_at(Instant::now() - Duration::from_millis(1), |_| {})
                .unwrap();
        })
        .unwrap();
    })
    .unwrap();
    let start = Instant::now();
    for _ in 0..3 {
        lp.run_once().unwrap();
    }
    assert!(!lp.has_events().unwrap());
    assert!(start.elapsed() < Duration::from_secs(5));
    // Only the first iteration had to enter the kernel to wait.
    assert_eq!(lp.stats().unwrap().waits, 1, "{:?}", lp.stats());
}

/// §1.1 across kernel turns: a burst of immediates longer than the loop
/// goes without looking at the ring (32) lets the loop reap an fd's
/// readiness mid-burst, but the fd's handler still waits for the last
/// immediate.
#[test]
fn fd_reaped_during_a_long_burst_of_immediates_runs_after_it() {
    fn again(h: &ringloop::Handle, left: Rc<Cell<u32>>) {
        if left.get() > 0 {
            left.set(left.get() - 1);
            h.add_immediate(move |h| again(h, left)).unwrap();
        }
    }
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let left = Rc::new(Cell::new(200));
    let fd_ran_with = Rc::new(Cell::new(None));
    let (l, ran) = (left.clone(), fd_ran_with.clone());
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        ran.set(Some(l.get()));
        lp.remove_fd(ev.id).unwrap();
    })
    .unwrap();
    again(&lp, left.clone());
    // The watch's poll is only queued: no iteration has entered the kernel.
    let before = lp.stats().unwrap().completions;
    while left.get() > 0 {
        lp.run_once().unwrap();
        assert_eq!(fd_ran_with.get(), None, "fd ran inside the burst");
    }
    assert!(
        lp.stats().unwrap().completions > before,
        "the poll's completion was reaped during the burst"
    );
    run_until(&lp, 10, || fd_ran_with.get().is_some());
    assert_eq!(fd_ran_with.get(), Some(0));
}
