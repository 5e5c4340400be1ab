//! Edge-triggered watches (`Interest::EDGE`): one multishot poll per watch,
//! a handler call per readiness change instead of per iteration, and
//! everything else (close-means-closed, overflow, interest changes) as for
//! level-triggered watches.

mod common;

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use common::*;
use ringloop::{EventLoop, FdId, Interest, WaitTimeout};

/// Watches `fd` without touching it: counts calls and records their flags.
fn counter(lp: &EventLoop, fd: OwnedFd, interest: Interest) -> (FdId, Rc<RefCell<Vec<Interest>>>) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let id = lp
        .add_fd(fd, interest, move |_, ev| {
            assert!(!ev.ready.is_empty());
            assert!(!ev.ready.is_edge(), "EDGE is a mode, never a condition");
            s.borrow_mut().push(ev.ready);
        })
        .unwrap();
    (id, seen)
}

#[test]
fn edge_is_a_mode_not_a_condition() {
    let both = Interest::READ | Interest::EDGE;
    assert!(both.is_edge());
    assert!(!Interest::READ.is_edge());
    assert!(Interest::EDGE.is_empty(), "EDGE alone monitors nothing");
    assert_eq!(both.conditions(), Interest::READ);
    assert!(both.contains(Interest::READ));
    assert_eq!(format!("{both:?}"), "READ|EDGE");
    assert_eq!(Interest::from_bits_truncate(0xff), Interest::ALL);
    assert_eq!(!both, Interest::WRITE | Interest::ERROR);

    let lp = nonblocking_loop();
    let (a, _b) = socketpair();
    let (id, seen) = counter(&lp, a, Interest::EDGE);
    assert!(
        !lp.has_events().unwrap(),
        "an EDGE-only watch is not active"
    );
    spin(&lp, 5);
    assert!(seen.borrow().is_empty());
    lp.remove_fd(id).unwrap();
}

/// Data that is left unread is reported once, not every iteration; new data
/// is reported again. (A level watch is called every iteration instead.)
#[test]
fn unread_data_is_reported_once_per_arrival() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (_, seen) = counter(&lp, a, Interest::READ | Interest::EDGE);
    let (la, lb) = socketpair();
    let (_, level) = counter(&lp, la, Interest::READ);
    spin(&lp, 5);
    assert!(seen.borrow().is_empty(), "nothing to read yet");

    write_fd(b.as_raw_fd(), b"x").unwrap();
    write_fd(lb.as_raw_fd(), b"x").unwrap();
    spin(&lp, 20);
    assert_eq!(*seen.borrow(), vec![Interest::READ]);
    assert!(level.borrow().len() >= 5, "level: {}", level.borrow().len());

    write_fd(b.as_raw_fd(), b"y").unwrap();
    spin(&lp, 20);
    assert_eq!(seen.borrow().len(), 2, "new data is a new edge");
}

/// An fd that is already readable when the watch is added is reported once.
#[test]
fn already_ready_fd_is_reported_at_add() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"early").unwrap();
    let (_, seen) = counter(&lp, a, Interest::READ | Interest::EDGE);
    spin(&lp, 20);
    assert_eq!(seen.borrow().len(), 1);
}

/// A handler that drains the fd is called once per message, with the data.
#[test]
fn draining_handler_sees_every_message() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let raw = a.as_raw_fd();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    lp.add_fd(a, Interest::READ | Interest::EDGE, move |_, _| {
        while let Ok(data) = read_fd(raw, 64) {
            if data.is_empty() {
                break;
            }
            g.borrow_mut().extend(data);
        }
    })
    .unwrap();
    for msg in [&b"one"[..], b"two", b"three"] {
        write_fd(b.as_raw_fd(), msg).unwrap();
        spin(&lp, 10);
    }
    assert_eq!(&got.borrow()[..], b"onetwothree");
}

/// WRITE: reported when the fd becomes writable, then again only after the
/// send buffer was full and the peer made room.
#[test]
fn write_is_reported_when_room_appears() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    small_sndbuf(a.as_raw_fd());
    let raw = a.as_raw_fd();
    let fills = Rc::new(Cell::new(0));
    let f = fills.clone();
    lp.add_fd(a, Interest::WRITE | Interest::EDGE, move |_, ev| {
        assert_eq!(ev.ready, Interest::WRITE);
        fill(raw);
        f.set(f.get() + 1);
    })
    .unwrap();
    spin(&lp, 20);
    assert_eq!(fills.get(), 1, "writable once, then full");
    while !read_fd(b.as_raw_fd(), 65536).unwrap_or_default().is_empty() {}
    spin(&lp, 20);
    assert_eq!(fills.get(), 2, "room again after the peer read");
}

/// The peer's close is an edge: READ is reported (the read returns 0), and
/// the watch does not spin on the hang-up afterwards.
#[test]
fn peer_close_is_reported_without_spinning() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (_, seen) = counter(&lp, a, Interest::READ | Interest::ERROR | Interest::EDGE);
    drop(b);
    spin(&lp, 50);
    let n = seen.borrow().len();
    assert!((1..=2).contains(&n), "called {n} times");
    assert!(seen.borrow()[0].contains(Interest::READ | Interest::ERROR));
}

/// Close means closed: removing an edge watch (its multishot poll is still
/// armed) closes the fd before `remove_fd` returns, from outside and from
/// inside its own handler.
#[test]
fn removal_closes_at_once() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (id, _) = counter(&lp, a, Interest::READ | Interest::EDGE);
    spin(&lp, 3);
    lp.remove_fd(id).unwrap();
    assert!(peer_closed(b.as_raw_fd()), "outside a handler");

    let (a, b) = socketpair();
    lp.add_fd(a, Interest::READ | Interest::EDGE, |lp, ev| {
        lp.remove_fd(ev.id).unwrap()
    })
    .unwrap();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    spin(&lp, 5);
    assert!(peer_closed(b.as_raw_fd()), "inside its handler");
    let stats = lp.stats().unwrap();
    assert_eq!(
        stats.in_flight, 1,
        "only the wake-up poll is left: {stats:?}"
    );
}

/// Switching modes: level to edge stops the per-iteration calls; edge to
/// level starts them again.
#[test]
fn interest_change_switches_mode() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"unread").unwrap();
    let (id, seen) = counter(&lp, a, Interest::READ);
    spin(&lp, 5);
    assert_eq!(seen.borrow().len(), 5, "level: every iteration");

    lp.set_interest(id, Interest::READ | Interest::EDGE)
        .unwrap();
    assert!(lp.interest(id).unwrap().is_edge());
    seen.borrow_mut().clear();
    spin(&lp, 20);
    assert_eq!(seen.borrow().len(), 1, "edge: once for what is there");

    lp.set_interest(id, Interest::READ).unwrap();
    seen.borrow_mut().clear();
    spin(&lp, 5);
    assert_eq!(seen.borrow().len(), 5, "level again");
}

/// A full completion queue ends multishot polls; the loop arms them again,
/// so edge watches keep working after an overflow.
#[test]
fn edge_watches_survive_cq_overflow() {
    let lp = EventLoop::builder()
        .sq_entries(8)
        .cq_entries(16)
        .wait_timeout(WaitTimeout::Never)
        .build()
        .unwrap();
    let calls = Rc::new(RefCell::new(vec![0u32; 64]));
    let mut peers = Vec::new();
    for i in 0..64 {
        let (a, b) = socketpair();
        write_fd(b.as_raw_fd(), b"x").unwrap();
        peers.push(b);
        let c = calls.clone();
        let raw = a.as_raw_fd();
        lp.add_fd(a, Interest::READ | Interest::EDGE, move |_, _| {
            let _ = read_fd(raw, 16);
            c.borrow_mut()[i] += 1;
        })
        .unwrap();
    }
    run_until(&lp, 2000, || calls.borrow().iter().all(|&n| n == 1));
    spin(&lp, 200);
    assert!(
        calls.borrow().iter().all(|&n| n == 1),
        "{:?}",
        calls.borrow()
    );
    for b in &peers {
        write_fd(b.as_raw_fd(), b"y").unwrap();
    }
    run_until(&lp, 2000, || calls.borrow().iter().all(|&n| n == 2));
    let stats = lp.stats().unwrap();
    assert!(
        stats.overflow_flushes > 0,
        "the CQ never overflowed: {stats:?}"
    );
}

/// Fairness holds for edge watches too: with several ready at once, each
/// runs once before any runs twice.
#[test]
fn ready_edge_watches_take_turns() {
    let lp = nonblocking_loop();
    let order = Rc::new(RefCell::new(Vec::new()));
    let mut peers = Vec::new();
    for i in 0..4 {
        let (a, b) = socketpair();
        let raw = a.as_raw_fd();
        let o = order.clone();
        lp.add_fd(a, Interest::READ | Interest::EDGE, move |_, _| {
            let _ = read_fd(raw, 16);
            o.borrow_mut().push(i);
        })
        .unwrap();
        write_fd(b.as_raw_fd(), b"x").unwrap();
        peers.push(b);
    }
    spin(&lp, 10);
    let mut got = order.borrow().clone();
    assert_eq!(got.len(), 4, "{got:?}");
    got.sort();
    assert_eq!(got, vec![0, 1, 2, 3]);
}
