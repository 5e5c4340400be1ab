//! Nothing leaks: fds (counted in /proc/self/fd) and in-flight operations.
//! The tests count process-wide fds, so they run one at a time.

mod common;

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::*;
use io_uring::{opcode, types};
use ringloop::{EventLoop, Interest};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first signal watch in a process creates the eventfd that the signal
/// handler writes; it is kept for the life of the process (a handler may run
/// at any time). Tests that count fds and add signals create it before
/// counting, whichever of them runs first.
fn create_signal_eventfd() {
    let lp = EventLoop::new().unwrap();
    let id = lp.add_signal(libc::SIGRTMIN() + 10, |_, _| {}).unwrap();
    lp.remove_signal(id).unwrap();
}

/// Dropping a loop with live watches, timers, immediates, signals and
/// in-flight operations leaves the fd count where it was, closes owned fds
/// and runs every operation callback once.
#[test]
fn drop_with_everything_live_leaks_no_fd() {
    let _s = serial();
    create_signal_eventfd();
    let before = open_fd_count();
    let (r, w) = blocking_pipe();
    let callbacks = Rc::new(Cell::new(0));
    let peers;
    {
        let lp = EventLoop::new().unwrap();
        let mut ps = Vec::new();
        for i in 0..8 {
            let (a, b) = socketpair();
            if i % 2 == 0 {
                write_fd(b.as_raw_fd(), b"x").unwrap();
            }
            lp.add_fd(a, Interest::READ | Interest::ERROR, |_, _| {})
                .unwrap();
            ps.push(b);
        }
        let (a, b) = socketpair();
        lp.add_fd(a, Interest::NONE, |_, _| {}).unwrap();
        ps.push(b);
        lp.add_timer(Duration::from_secs(60), |_| {}).unwrap();
        lp.add_timer_asap(|_| {}).unwrap();
        lp.add_immediate(|_| {}).unwrap();
        lp.add_signal(libc::SIGRTMIN() + 10, |_, _| {}).unwrap();
        let _remote = lp.remote().unwrap();
        for _ in 0..4 {
            let mut buf = vec![0u8; 32].into_boxed_slice();
            let entry = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 32).build();
            let c = callbacks.clone();
            // SAFETY: `buf` moves into the callback.
            unsafe {
                lp.submit(entry, move |_, comp| {
                    let _ = &buf;
                    assert!(comp.result < 0, "read got data: {}", comp.result);
                    c.set(c.get() + 1);
                })
            }
            .unwrap();
        }
        lp.set_wait_timeout(ringloop::WaitTimeout::Never).unwrap();
        for _ in 0..5 {
            let _ = lp.run_once();
        }
        assert!(lp.stats().unwrap().in_flight > 8);
        peers = ps;
    }
    assert_eq!(callbacks.get(), 4, "every in-flight callback ran once");
    for b in &peers {
        assert!(peer_closed(b.as_raw_fd()));
    }
    drop(peers);
    drop((r, w));
    assert_eq!(open_fd_count(), before);
}

/// Many loops created and dropped: no fd growth.
#[test]
fn create_and_drop_loops() {
    let _s = serial();
    let before = open_fd_count();
    for _ in 0..20 {
        let lp = EventLoop::new().unwrap();
        let (a, _b) = socketpair();
        lp.add_fd(a, Interest::READ, |_, _| {}).unwrap();
        let _ = lp.remote().unwrap();
    }
    assert_eq!(open_fd_count(), before);
}

/// stats().in_flight returns to its baseline once everything is removed.
#[test]
fn in_flight_back_to_baseline() {
    let _s = serial();
    create_signal_eventfd();
    let before_fds = open_fd_count();
    let lp = nonblocking_loop();
    let baseline = lp.stats().unwrap().in_flight;
    let (r, w) = blocking_pipe();
    let mut fds = Vec::new();
    let mut peers = Vec::new();
    for i in 0..10 {
        let (a, b) = socketpair();
        if i % 3 == 0 {
            write_fd(b.as_raw_fd(), b"x").unwrap();
        }
        let interest = [Interest::READ, Interest::WRITE, Interest::ERROR][i % 3];
        fds.push(lp.add_fd(a, interest, |_, _| {}).unwrap());
        peers.push(b);
    }
    let sig = lp.add_signal(libc::SIGRTMIN() + 11, |_, _| {}).unwrap();
    let mut buf = vec![0u8; 8].into_boxed_slice();
    let entry = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 8).build();
    // SAFETY: `buf` moves into the callback.
    let op = unsafe { lp.submit(entry, move |_, _| drop(buf)) }.unwrap();
    spin(&lp, 20);
    assert!(lp.stats().unwrap().in_flight > baseline);
    for id in fds {
        lp.remove_fd(id).unwrap();
    }
    lp.remove_signal(sig).unwrap();
    lp.cancel_op(op).unwrap();
    spin(&lp, 20);
    assert_eq!(lp.stats().unwrap().in_flight, baseline, "{:?}", lp.stats());
    assert!(!lp.has_events().unwrap());
    drop(lp);
    drop(peers);
    drop((r, w));
    assert_eq!(open_fd_count(), before_fds);
}
