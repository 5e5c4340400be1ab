//! Bad input gives an error, never a panic: double removes, stale ids,
//! invalid signals and fds, garbage completions, calls after the loop is gone.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use io_uring::{opcode, squeue};
use ringloop::{Error, EventLoop, Interest};

#[test]
fn removing_a_watch_twice_is_not_found() {
    let lp = nonblocking_loop();
    let (a, _b) = socketpair();
    let id = lp.add_fd(a, Interest::READ, |_, _| {}).unwrap();
    lp.remove_fd(id).unwrap();
    assert!(matches!(lp.remove_fd(id), Err(Error::NotFound)));
    assert!(matches!(lp.take_fd(id), Err(Error::NotFound)));
    assert!(matches!(
        lp.set_interest(id, Interest::READ),
        Err(Error::NotFound)
    ));
    assert!(matches!(lp.interest(id), Err(Error::NotFound)));
    assert!(matches!(lp.fd_error(id), Err(Error::NotFound)));
    assert!(matches!(lp.fd_of(id), Err(Error::NotFound)));
    assert!(matches!(
        lp.set_close_hook(id, |_| {}),
        Err(Error::NotFound)
    ));
}

#[test]
fn stale_ids_after_reuse_of_the_slot() {
    let lp = nonblocking_loop();
    let (a, _b) = socketpair();
    let old = lp.add_fd(a, Interest::READ, |_, _| {}).unwrap();
    lp.remove_fd(old).unwrap();
    let (c, _d) = socketpair();
    let new = lp.add_fd(c, Interest::READ, |_, _| {}).unwrap();
    assert_ne!(old, new);
    assert!(matches!(lp.remove_fd(old), Err(Error::NotFound)));
    assert!(
        lp.interest(new).is_ok(),
        "the stale id removed the new watch"
    );
}

#[test]
fn cancelling_twice_and_after_firing() {
    let lp = nonblocking_loop();
    let t = lp.add_timer(Duration::from_secs(10), |_| {}).unwrap();
    lp.cancel_timer(t).unwrap();
    assert!(matches!(lp.cancel_timer(t), Err(Error::NotFound)));
    assert!(matches!(
        lp.update_timer(t, Duration::from_secs(1)),
        Err(Error::NotFound)
    ));
    assert!(matches!(lp.timer_deadline(t), Err(Error::NotFound)));

    let fired = lp.add_timer_asap(|_| {}).unwrap();
    lp.run_once().unwrap();
    assert!(matches!(lp.cancel_timer(fired), Err(Error::NotFound)));

    let i = lp.add_immediate(|_| {}).unwrap();
    lp.cancel_immediate(i).unwrap();
    assert!(matches!(lp.cancel_immediate(i), Err(Error::NotFound)));
    assert!(matches!(lp.reschedule_immediate(i), Err(Error::NotFound)));
    let ran = lp.add_immediate(|_| {}).unwrap();
    lp.run_once().unwrap();
    assert!(matches!(lp.cancel_immediate(ran), Err(Error::NotFound)));

    let s = lp.add_signal(libc::SIGRTMIN() + 12, |_, _| {}).unwrap();
    lp.remove_signal(s).unwrap();
    assert!(matches!(lp.remove_signal(s), Err(Error::NotFound)));

    // SAFETY: NOP points at no memory.
    let op = unsafe { lp.submit(opcode::Nop::new().build(), |_, _| {}) }.unwrap();
    lp.cancel_op(op).unwrap();
    lp.cancel_op(op).unwrap();
    lp.run().unwrap();
    assert!(matches!(lp.cancel_op(op), Err(Error::NotFound)));
    assert!(!lp.has_events().unwrap());
}

#[test]
fn unwatchable_signals_are_bad_signal() {
    let lp = nonblocking_loop();
    for sig in [
        libc::SIGKILL,
        libc::SIGSTOP,
        0,
        -1,
        65,
        1000,
        i32::MIN,
        i32::MAX,
    ] {
        let r = lp.add_signal(sig, |_, _| {});
        assert!(
            matches!(r, Err(Error::BadSignal(n)) if n == sig),
            "{sig}: {:?}",
            r.err()
        );
    }
    assert!(!lp.has_events().unwrap());
}

#[test]
fn bad_fds_and_deadlines() {
    let lp = nonblocking_loop();
    for fd in [-1, -100, i32::MAX, 1_000_000] {
        // SAFETY: the call must refuse these fds.
        let r = unsafe { lp.add_raw_fd(fd, Interest::READ, |_, _| {}) };
        assert!(matches!(r, Err(Error::BadFd(n)) if n == fd), "{fd}");
    }
    assert!(matches!(
        lp.add_timer(Duration::MAX, |_| {}),
        Err(Error::DeadlineOverflow)
    ));
    // Interest bits beyond READ|WRITE|ERROR are ignored.
    assert_eq!(Interest::from_bits_truncate(0xff), Interest::ALL);
}

#[test]
fn skip_success_submission_is_refused() {
    let lp = nonblocking_loop();
    let entry = opcode::Nop::new()
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS);
    // SAFETY: NOP points at no memory.
    let r = unsafe { lp.submit(entry, |_, _| panic!("never")) };
    assert!(matches!(r, Err(Error::Io(_))));
    assert!(!lp.has_events().unwrap());
}

#[test]
fn garbage_and_duplicate_completions_are_ignored() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let c = calls.clone();
    lp.add_fd(a, Interest::READ, move |_, _| c.set(c.get() + 1))
        .unwrap();
    let _ = lp.run_once();
    let live = lp.in_flight_user_data().unwrap();
    for ud in [
        0,
        1,
        u64::MAX,
        0xdead_beef,
        1 << 32,
        (1 << 32) | 1,
        (7 << 32) | 3,
    ] {
        for res in [0, -1, -libc::EBADF, i32::MIN, i32::MAX, libc::POLLIN as i32] {
            for flags in [0, 1, 2, u32::MAX] {
                lp.inject_completion(ud, res, flags).unwrap();
            }
        }
    }
    // Duplicates and made-up results for live requests do not break the loop.
    for &ud in &live {
        lp.inject_completion(ud, -libc::ECANCELED, 0).unwrap();
        lp.inject_completion(ud, -libc::ECANCELED, 0).unwrap();
    }
    spin(&lp, 20);
    // The watch still works.
    let before = calls.get();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    for _ in 0..5 {
        let _ = lp.run_once();
    }
    assert!(calls.get() > before, "watch dead after garbage completions");
}

#[test]
fn calls_after_the_loop_is_gone() {
    let lp = nonblocking_loop();
    let h = lp.handle();
    let (a, _b) = socketpair();
    let id = lp.add_fd(a, Interest::READ, |_, _| {}).unwrap();
    drop(lp);
    assert!(matches!(h.run_once(), Err(Error::LoopGone)));
    assert!(matches!(h.run(), Err(Error::LoopGone)));
    assert!(matches!(h.add_immediate(|_| {}), Err(Error::LoopGone)));
    assert!(matches!(
        h.add_timer(Duration::ZERO, |_| {}),
        Err(Error::LoopGone)
    ));
    assert!(matches!(h.remove_fd(id), Err(Error::LoopGone)));
    assert!(matches!(h.remote(), Err(Error::LoopGone)));
    assert!(matches!(h.stats(), Err(Error::LoopGone)));
    assert!(matches!(h.has_events(), Err(Error::LoopGone)));
    let (c, _d) = socketpair();
    assert!(matches!(
        h.add_fd(c, Interest::READ, |_, _| {}),
        Err(Error::LoopGone)
    ));
}

/// A handler that removes itself (twice) and cancels a timer (twice).
#[test]
fn handler_removing_everything_including_itself() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let t = lp
        .add_timer(Duration::from_secs(60), |_| panic!("cancelled"))
        .unwrap();
    let i = lp.add_immediate(|_| {}).unwrap();
    lp.cancel_immediate(i).unwrap();
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        lp.remove_fd(ev.id).unwrap();
        assert!(matches!(lp.remove_fd(ev.id), Err(Error::NotFound)));
        assert!(matches!(
            lp.set_interest(ev.id, Interest::WRITE),
            Err(Error::NotFound)
        ));
        lp.cancel_timer(t).unwrap();
        assert!(matches!(lp.cancel_timer(t), Err(Error::NotFound)));
    })
    .unwrap();
    lp.run().unwrap();
    assert!(!lp.has_events().unwrap());
}

/// Error messages name the cause; conversions to io::Error keep the kind.
#[test]
fn error_messages_and_kinds() {
    let e: std::io::Error = Error::WouldBlock.into();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    let e: std::io::Error = Error::NotFound.into();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(Error::Nested.to_string().contains("nesting"));
    assert!(Error::BadSignal(9).to_string().contains('9'));
    assert!(Error::BadFd(42).to_string().contains("42"));
    let _ = EventLoop::new().unwrap();
}

/// An operation callback run during teardown gets LoopGone from the loop.
#[test]
fn op_callback_during_teardown_sees_loop_gone() {
    use std::os::fd::AsRawFd;
    let (r, _w) = blocking_pipe();
    let res = std::rc::Rc::new(std::cell::Cell::new(None));
    {
        let lp = nonblocking_loop();
        let mut buf = vec![0u8; 8].into_boxed_slice();
        let entry =
            opcode::Read::new(io_uring::types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 8).build();
        let rr = res.clone();
        // SAFETY: `buf` moves into the callback.
        unsafe {
            lp.submit(entry, move |lp, c| {
                let _ = &buf;
                let gone = matches!(lp.add_immediate(|_| {}), Err(Error::LoopGone));
                rr.set(Some((c.result, gone)));
            })
        }
        .unwrap();
        let _ = lp.run_once();
    }
    assert_eq!(res.get(), Some((-libc::ECANCELED, true)));
}

/// Extreme wait timeouts are accepted: zero, and one too long for the kernel
/// (which acts as "forever" and still wakes for a remote schedule).
#[test]
fn extreme_wait_timeouts() {
    let lp = EventLoop::builder()
        .wait_timeout(ringloop::WaitTimeout::After(Duration::ZERO))
        .build()
        .unwrap();
    lp.run_once().unwrap();
    let lp = EventLoop::builder()
        .wait_timeout(ringloop::WaitTimeout::After(Duration::MAX))
        .build()
        .unwrap();
    let remote = lp.remote().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        remote.schedule(|_| {}).unwrap();
    });
    let start = std::time::Instant::now();
    lp.run_once().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    t.join().unwrap();
}

/// traps.md, libxev#233: an operation's id is its slot plus a generation.
/// After a finished operation's slot is reused, its old id cancels nothing
/// and a completion injected under it never reaches the new operation.
#[test]
fn cancel_of_a_finished_op_never_hits_the_op_reusing_its_slot() {
    use slotmap::Key;
    use std::cell::Cell;
    use std::rc::Rc;
    let lp = loop_with_timeout(Duration::from_millis(20));
    // SAFETY: NOP points at no memory.
    let first = unsafe { lp.submit(opcode::Nop::new().build(), |_, _| {}) }.unwrap();
    lp.run().unwrap();
    let (r, w) = blocking_pipe();
    let mut buf = vec![0u8; 8].into_boxed_slice();
    let entry = opcode::Read::new(io_uring::types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 8).build();
    let got = Rc::new(Cell::new(None));
    let g = got.clone();
    // SAFETY: `buf` moves into the callback, so it outlives the read.
    let second = unsafe {
        lp.submit(entry, move |_, c| {
            let _ = &buf;
            g.set(Some(c.result));
        })
    }
    .unwrap();
    let (u1, u2) = (first.data().as_ffi(), second.data().as_ffi());
    assert_eq!(u1 as u32, u2 as u32, "the read reuses the NOP's slot");
    assert_ne!(u1, u2, "with a new generation");
    assert!(matches!(lp.cancel_op(first), Err(Error::NotFound)));
    lp.inject_completion(u1, -libc::ECANCELED, 0).unwrap();
    for _ in 0..3 {
        lp.run_once().unwrap();
    }
    assert_eq!(got.get(), None, "the old id reached the new operation");
    write_fd(w.as_raw_fd(), b"x").unwrap();
    lp.run().unwrap();
    assert_eq!(got.get(), Some(1));
}
