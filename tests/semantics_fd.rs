//! SEMANTICS.md §2: fd watches, the expected-outcomes table, level
//! triggering and interest changes.

mod common;

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use common::*;
use ringloop::{EventLoop, FdEvent, FdId, Handle, Interest};

/// Watches `fd` with `interest`, recording every dispatch and checking that
/// its flags are a non-empty subset of the watch's interest at dispatch time.
fn recorder(lp: &EventLoop, fd: OwnedFd, interest: Interest) -> (FdId, Rc<RefCell<Vec<Interest>>>) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let id = lp
        .add_fd(fd, interest, move |lp: &Handle, ev: FdEvent| {
            let now = lp.interest(ev.id).unwrap();
            assert!(!ev.ready.is_empty(), "empty flags");
            assert!(now.contains(ev.ready), "{:?} not in {:?}", ev.ready, now);
            s.borrow_mut().push(ev.ready);
        })
        .unwrap();
    (id, seen)
}

/// READ, peer closed: READ (read returns 0), every iteration until changed.
#[test]
fn read_peer_closed_reports_read_every_iteration() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let raw = a.as_raw_fd();
    let zero_reads = Rc::new(Cell::new(0));
    let z = zero_reads.clone();
    let id = lp
        .add_fd(a, Interest::READ, move |_, ev| {
            assert_eq!(ev.ready, Interest::READ);
            if read_fd(raw, 16).unwrap().is_empty() {
                z.set(z.get() + 1);
            }
        })
        .unwrap();
    assert!(lp.run_once().is_err(), "nothing yet");
    drop(b);
    for _ in 0..5 {
        lp.run_once().unwrap();
    }
    assert_eq!(zero_reads.get(), 5);
    lp.set_interest(id, Interest::NONE).unwrap();
    assert!(lp.run_once().is_err());
    assert_eq!(zero_reads.get(), 5);
}

/// Same over TCP loopback.
#[test]
fn read_peer_closed_tcp() {
    let lp = nonblocking_loop();
    let (client, server) = tcp_pair();
    let (_, seen) = recorder(&lp, client.into(), Interest::READ);
    drop(server);
    run_until(&lp, 100, || seen.borrow().len() >= 3);
    assert!(seen.borrow().iter().all(|&f| f == Interest::READ));
}

/// ERROR, data arrives: nothing.
#[test]
fn error_only_ignores_data() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (_, seen) = recorder(&lp, a, Interest::ERROR);
    write_fd(b.as_raw_fd(), b"data").unwrap();
    spin(&lp, 5);
    assert!(matches!(lp.run_once(), Err(ringloop::Error::WouldBlock)));
    assert!(seen.borrow().is_empty());
    assert_eq!(lp.stats().unwrap().handlers, 0);
}

/// ERROR, peer shutdown(SHUT_WR) or close: ERROR.
#[test]
fn error_peer_shutdown_or_close_reports_error() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (_, seen) = recorder(&lp, a, Interest::ERROR);
    shutdown(&b, libc::SHUT_WR);
    lp.run_once().unwrap();
    assert_eq!(*seen.borrow(), [Interest::ERROR]);

    let (a, b) = socketpair();
    let (_, seen) = recorder(&lp, a, Interest::ERROR);
    drop(b);
    // The first watch is still ready too; run until the second reported.
    run_until(&lp, 10, || !seen.borrow().is_empty());
    assert_eq!(seen.borrow()[0], Interest::ERROR);
}

/// ERROR over TCP: the peer's close is reported.
#[test]
fn error_peer_close_tcp() {
    let lp = nonblocking_loop();
    let (client, server) = tcp_pair();
    let (_, seen) = recorder(&lp, client.into(), Interest::ERROR);
    drop(server);
    run_until(&lp, 100, || !seen.borrow().is_empty());
    assert_eq!(seen.borrow()[0], Interest::ERROR);
}

/// READ|ERROR, peer closed: READ|ERROR.
#[test]
fn read_error_peer_closed_reports_both() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (_, seen) = recorder(&lp, a, Interest::READ | Interest::ERROR);
    drop(b);
    lp.run_once().unwrap();
    lp.run_once().unwrap();
    assert_eq!(
        *seen.borrow(),
        [
            Interest::READ | Interest::ERROR,
            Interest::READ | Interest::ERROR
        ]
    );
}

/// READ|ERROR with data only: READ.
#[test]
fn read_error_data_reports_read_only() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (_, seen) = recorder(&lp, a, Interest::READ | Interest::ERROR);
    write_fd(b.as_raw_fd(), b"x").unwrap();
    lp.run_once().unwrap();
    assert_eq!(*seen.borrow(), [Interest::READ]);
}

/// WRITE, peer closed: not called; the interest reads back empty.
#[test]
fn write_only_peer_closed_is_not_called_and_interest_empties() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    drop(b);
    let (id, seen) = recorder(&lp, a, Interest::WRITE);
    spin(&lp, 5);
    assert!(seen.borrow().is_empty(), "{:?}", seen.borrow());
    assert_eq!(lp.interest(id).unwrap(), Interest::NONE);
    assert!(!lp.has_events().unwrap(), "it stopped being monitored");
}

/// WRITE, peer closes while the writer has already been called.
#[test]
fn write_only_peer_closes_later() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (id, seen) = recorder(&lp, a, Interest::WRITE);
    lp.run_once().unwrap();
    assert_eq!(*seen.borrow(), [Interest::WRITE]);
    drop(b);
    spin(&lp, 5);
    assert_eq!(seen.borrow().len(), 1, "{:?}", seen.borrow());
    assert_eq!(lp.interest(id).unwrap(), Interest::NONE);
}

/// WRITE, a pipe's reader closed: not called; the interest reads back empty.
#[test]
fn write_only_pipe_reader_closed() {
    let lp = nonblocking_loop();
    let (r, w) = pipe();
    drop(r);
    let (id, seen) = recorder(&lp, w, Interest::WRITE);
    spin(&lp, 5);
    assert!(seen.borrow().is_empty(), "{:?}", seen.borrow());
    assert_eq!(lp.interest(id).unwrap(), Interest::NONE);
    // Asking again re-arms it (and it is disabled again, still not called).
    lp.set_interest(id, Interest::WRITE).unwrap();
    spin(&lp, 5);
    assert!(seen.borrow().is_empty());
    assert_eq!(lp.interest(id).unwrap(), Interest::NONE);
}

/// WRITE|ERROR, a pipe's reader closed: WRITE|ERROR.
#[test]
fn write_error_pipe_reader_closed() {
    let lp = nonblocking_loop();
    let (r, w) = pipe();
    drop(r);
    let (id, seen) = recorder(&lp, w, Interest::WRITE | Interest::ERROR);
    lp.run_once().unwrap();
    assert_eq!(*seen.borrow(), [Interest::WRITE | Interest::ERROR]);
    assert_eq!(lp.interest(id).unwrap(), Interest::WRITE | Interest::ERROR);
}

/// WRITE, peer shutdown(SHUT_WR): WRITE, as before.
#[test]
fn write_peer_shut_wr_still_writes() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (id, seen) = recorder(&lp, a, Interest::WRITE);
    shutdown(&b, libc::SHUT_WR);
    for _ in 0..3 {
        lp.run_once().unwrap();
    }
    assert_eq!(*seen.borrow(), [Interest::WRITE; 3]);
    assert_eq!(lp.interest(id).unwrap(), Interest::WRITE);
}

/// WRITE, peer shutdown(SHUT_WR) and our send buffer full: no busy spin, and
/// WRITE again once the peer drains.
#[test]
fn write_peer_shut_wr_full_buffer_does_not_spin() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    small_sndbuf(a.as_raw_fd());
    let written = fill(a.as_raw_fd());
    assert!(written > 0);
    shutdown(&b, libc::SHUT_WR);
    let (id, seen) = recorder(&lp, a, Interest::WRITE);
    let before = lp.stats().unwrap();
    let mut would_block = 0;
    for _ in 0..50 {
        if lp.run_once().is_err() {
            would_block += 1;
        }
    }
    let after = lp.stats().unwrap();
    assert!(seen.borrow().is_empty(), "{:?}", seen.borrow());
    assert_eq!(would_block, 50);
    assert_eq!(after.handlers, before.handlers);
    // A busy spin would reap at least one completion per iteration.
    assert!(
        after.completions - before.completions < 10,
        "{before:?} -> {after:?}"
    );
    assert_eq!(lp.interest(id).unwrap(), Interest::WRITE);
    // The peer drains: writable again.
    while !recv_now(b.as_raw_fd(), 1 << 20)
        .unwrap_or_default()
        .is_empty()
    {}
    run_until(&lp, 50, || !seen.borrow().is_empty());
    assert_eq!(seen.borrow()[0], Interest::WRITE);
}

/// The same with a writer that also wants ERROR: the half-close is ERROR.
#[test]
fn write_error_peer_shut_wr_reports_error() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    small_sndbuf(a.as_raw_fd());
    fill(a.as_raw_fd());
    shutdown(&b, libc::SHUT_WR);
    let (_, seen) = recorder(&lp, a, Interest::WRITE | Interest::ERROR);
    lp.run_once().unwrap();
    assert_eq!(*seen.borrow(), [Interest::ERROR]);
}

/// Level triggered: READ again every iteration while data stays unread, and
/// not once it is read.
#[test]
fn level_triggered_while_data_unread() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let raw = a.as_raw_fd();
    let (_, seen) = recorder(&lp, a, Interest::READ);
    write_fd(b.as_raw_fd(), b"0123456789").unwrap();
    for _ in 0..4 {
        lp.run_once().unwrap();
    }
    assert_eq!(seen.borrow().len(), 4);
    assert_eq!(read_fd(raw, 64).unwrap(), b"0123456789");
    // At most one more dispatch may have been decided before the read.
    spin(&lp, 5);
    assert!(matches!(lp.run_once(), Err(ringloop::Error::WouldBlock)));
    let n = seen.borrow().len();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    lp.run_once().unwrap();
    assert_eq!(seen.borrow().len(), n + 1);
}

/// Interest changes from inside a handler take effect for the next dispatch:
/// READ -> WRITE -> READ|WRITE -> NONE.
#[test]
fn interest_changes_from_inside_handler() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let seen = log::<Interest>();
    let s = seen.clone();
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        let now = lp.interest(ev.id).unwrap();
        assert!(now.contains(ev.ready));
        s.borrow_mut().push(ev.ready);
        let next = match s.borrow().len() {
            1 => Interest::WRITE,
            2 => Interest::READ | Interest::WRITE,
            _ => Interest::NONE,
        };
        lp.set_interest(ev.id, next).unwrap();
    })
    .unwrap();
    spin(&lp, 10);
    assert_eq!(
        *seen.borrow(),
        [
            Interest::READ,
            Interest::WRITE,
            Interest::READ | Interest::WRITE
        ]
    );
}

/// Changing another watch's interest from a handler: the change applies to
/// what it is told next, even if the kernel reported it ready already.
#[test]
fn interest_change_of_other_watch_applies_at_dispatch() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let raw = a.as_raw_fd();
    // Watch 2 wants READ|WRITE; watch 1 (which runs first) narrows it to WRITE.
    let target = Rc::new(Cell::new(None));
    let t = target.clone();
    let first = lp
        .add_fd(a, Interest::READ, move |lp, ev| {
            if let Some(id) = t.take() {
                lp.set_interest(id, Interest::WRITE).unwrap();
            }
            lp.set_interest(ev.id, Interest::NONE).unwrap();
        })
        .unwrap();
    let seen = log::<Interest>();
    let s = seen.clone();
    // SAFETY: `raw` is owned by the first watch, which outlives this one.
    let second = unsafe {
        lp.add_raw_fd(raw, Interest::READ | Interest::WRITE, move |lp, ev| {
            assert_eq!(lp.interest(ev.id).unwrap(), Interest::WRITE);
            s.borrow_mut().push(ev.ready);
            lp.set_interest(ev.id, Interest::NONE).unwrap();
        })
        .unwrap()
    };
    target.set(Some(second));
    spin(&lp, 10);
    assert_eq!(*seen.borrow(), [Interest::WRITE]);
    let _ = first;
}

/// Watches on one fd each see only their own subset.
#[test]
fn several_watches_on_one_fd_see_their_own_subset() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let raw = a.as_raw_fd();
    let (_, reads) = recorder(&lp, a, Interest::READ);
    let writes = log::<Interest>();
    let errors = log::<Interest>();
    for (interest, l) in [(Interest::WRITE, &writes), (Interest::ERROR, &errors)] {
        let l = l.clone();
        // SAFETY: `raw` is owned by the first watch, which outlives these.
        unsafe {
            lp.add_raw_fd(raw, interest, move |_, ev| l.borrow_mut().push(ev.ready))
                .unwrap();
        }
    }
    for _ in 0..6 {
        let _ = lp.run_once();
    }
    assert!(reads.borrow().iter().all(|&f| f == Interest::READ));
    assert!(writes.borrow().iter().all(|&f| f == Interest::WRITE));
    assert_eq!(reads.borrow().len(), 3);
    assert_eq!(writes.borrow().len(), 3);
    assert!(errors.borrow().is_empty());
    // The peer closes: the ERROR watch hears it, the reader sees READ.
    drop(b);
    for _ in 0..9 {
        let _ = lp.run_once();
    }
    assert!(errors.borrow().iter().all(|&f| f == Interest::ERROR));
    assert!(!errors.borrow().is_empty());
}

/// Removing a watch from inside another handler while it is ready: it never
/// runs, even though the kernel already reported it.
#[test]
fn removed_ready_watch_never_runs() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (c, d) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    write_fd(d.as_raw_fd(), b"x").unwrap();
    let victim = Rc::new(Cell::new(None::<FdId>));
    let killer_ran = Rc::new(Cell::new(0));
    let victim_ran = Rc::new(Cell::new(0));
    let (v, k) = (victim.clone(), killer_ran.clone());
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        k.set(k.get() + 1);
        if let Some(id) = v.take() {
            lp.remove_fd(id).unwrap();
        }
        lp.remove_fd(ev.id).unwrap();
    })
    .unwrap();
    let vr = victim_ran.clone();
    let id = lp
        .add_fd(c, Interest::READ, move |_, _| vr.set(vr.get() + 1))
        .unwrap();
    victim.set(Some(id));
    // Make sure both completions are in the loop's hands before dispatch.
    spin(&lp, 10);
    assert_eq!(killer_ran.get(), 1);
    assert!(victim_ran.get() <= 1);
    if victim_ran.get() == 1 {
        // The victim was dispatched first (fair order): then the killer ran
        // second and removed it; it must not run again after that.
        assert!(lp.interest(id).is_err());
    }
    assert!(!lp.has_events().unwrap());
}
