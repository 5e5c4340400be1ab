//! SEMANTICS.md §3: close means closed, stale completions, EBADF.
//!
//! Tests here count or reuse fd numbers, so they run one at a time.

mod common;

use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};

use common::*;
use ringloop::{Error, EventLoop, Interest};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removing an owning watch closes the fd: the peer sees EOF as soon as
/// `remove_fd` returns, for every interest (armed poll or not).
#[test]
fn remove_fd_peer_sees_eof_at_once() {
    let _s = serial();
    for plain in [false, true] {
        for interest in [
            Interest::READ,
            Interest::ERROR,
            Interest::READ | Interest::ERROR,
            Interest::NONE,
            Interest::ALL,
        ] {
            let lp = EventLoop::builder()
                .plain_setup(plain)
                .wait_timeout(ringloop::WaitTimeout::Never)
                .build()
                .unwrap();
            let (a, b) = socketpair();
            let id = lp.add_fd(a, interest, |_, _| {}).unwrap();
            // Get the poll into the kernel.
            let _ = lp.run_once();
            assert!(
                !peer_closed(b.as_raw_fd()),
                "{interest:?}: closed too early"
            );
            lp.remove_fd(id).unwrap();
            assert!(
                peer_closed(b.as_raw_fd()),
                "{interest:?} (plain setup: {plain}): peer sees no EOF"
            );
        }
    }
}

/// Also when the poll was only queued (no iteration ran since add_fd).
#[test]
fn remove_fd_before_any_iteration() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let id = lp.add_fd(a, Interest::READ, |_, _| {}).unwrap();
    lp.remove_fd(id).unwrap();
    assert!(peer_closed(b.as_raw_fd()));
    spin(&lp, 2);
    assert_eq!(lp.stats().unwrap().in_flight, 1, "only the wake-up poll");
}

/// Removing a watch from inside its own handler: EOF before remove_fd returns.
#[test]
fn remove_fd_inside_own_handler() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let braw = b.as_raw_fd();
    let checked = Rc::new(Cell::new(false));
    let c = checked.clone();
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        lp.remove_fd(ev.id).unwrap();
        // Drain our own byte first: the peer read 0 means EOF.
        assert!(peer_closed(braw));
        c.set(true);
    })
    .unwrap();
    lp.run_once().unwrap();
    assert!(checked.get());
}

/// Removing another watch from inside a handler.
#[test]
fn remove_other_fd_inside_handler() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (c, d) = socketpair();
    let victim = lp
        .add_fd(c, Interest::READ, |_, _| panic!("never ready"))
        .unwrap();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let draw = d.as_raw_fd();
    let ok = Rc::new(Cell::new(false));
    let o = ok.clone();
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        lp.remove_fd(victim).unwrap();
        o.set(peer_closed(draw));
        lp.remove_fd(ev.id).unwrap();
    })
    .unwrap();
    lp.run_once().unwrap();
    assert!(ok.get());
}

/// Dropping the loop closes every owned fd before drop returns.
#[test]
fn dropping_the_loop_closes_owned_fds() {
    let _s = serial();
    let lp = nonblocking_loop();
    let mut peers = Vec::new();
    for i in 0..10 {
        let (a, b) = socketpair();
        let interest = if i % 2 == 0 {
            Interest::READ
        } else {
            Interest::ERROR
        };
        lp.add_fd(a, interest, |_, _| {}).unwrap();
        peers.push(b);
    }
    let _ = lp.run_once();
    for b in &peers {
        assert!(!peer_closed(b.as_raw_fd()));
    }
    drop(lp);
    for b in &peers {
        assert!(peer_closed(b.as_raw_fd()));
    }
}

/// A raw watch of one end of a socket pair whose close hook closes the fd
/// and counts its runs: (watch, the other end, the count).
fn raw_watch_closed_by_its_hook(lp: &EventLoop) -> (ringloop::FdId, OwnedFd, Rc<Cell<u32>>) {
    let (a, b) = socketpair();
    let raw = a.into_raw_fd();
    // SAFETY: `raw` stays open until the close hook closes it.
    let id = unsafe { lp.add_raw_fd(raw, Interest::READ, |_, _| {}) }.unwrap();
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    lp.set_close_hook(id, move |fd| {
        assert_eq!(fd, raw);
        r.set(r.get() + 1);
        // SAFETY: the fd was handed to the loop with add_raw_fd; nobody else closes it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    })
    .unwrap();
    (id, b, runs)
}

/// A close hook runs exactly once, after the poll is cancelled: closing the fd
/// in it makes the peer see EOF when remove_fd returns.
#[test]
fn close_hook_runs_once_after_cancel() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (id, b, runs) = raw_watch_closed_by_its_hook(&lp);
    let _ = lp.run_once();
    lp.remove_fd(id).unwrap();
    assert_eq!(runs.get(), 1);
    assert!(peer_closed(b.as_raw_fd()));
    assert!(lp.remove_fd(id).is_err());
    drop(lp);
    assert_eq!(runs.get(), 1);
}

/// Dropping the loop runs close hooks once too.
#[test]
fn close_hook_runs_on_loop_drop() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let raw = a.into_raw_fd();
    // SAFETY: `raw` stays open until the close hook closes it.
    let id = unsafe { lp.add_raw_fd(raw, Interest::READ, |_, _| {}) }.unwrap();
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    lp.set_close_hook(id, move |fd| {
        r.set(r.get() + 1);
        // SAFETY: as above.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    })
    .unwrap();
    let _ = lp.run_once();
    drop(lp);
    assert_eq!(runs.get(), 1);
    assert!(peer_closed(b.as_raw_fd()));
}

/// take_fd hands the fd back with no kernel reference left: dropping it right
/// away gives the peer EOF; keeping it keeps the connection working.
#[test]
fn take_fd_returns_the_fd_without_kernel_reference() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let raw = a.as_raw_fd();
    let id = lp
        .add_fd(a, Interest::READ, |_, _| panic!("taken"))
        .unwrap();
    let _ = lp.run_once();
    let fd = lp.take_fd(id).unwrap().expect("owned watch returns its fd");
    assert_eq!(fd.as_raw_fd(), raw);
    write_fd(b.as_raw_fd(), b"ping").unwrap();
    assert_eq!(read_fd(fd.as_raw_fd(), 16).unwrap(), b"ping");
    spin(&lp, 3);
    assert!(!peer_closed(b.as_raw_fd()));
    drop(fd);
    assert!(peer_closed(b.as_raw_fd()));
    assert!(matches!(lp.take_fd(id), Err(Error::NotFound)));

    // A raw watch gives nothing back and does not close.
    let (c, d) = socketpair();
    // SAFETY: `c` outlives the watch.
    let id = unsafe { lp.add_raw_fd(c.as_raw_fd(), Interest::READ, |_, _| {}) }.unwrap();
    assert!(lp.take_fd(id).unwrap().is_none());
    assert!(!peer_closed(d.as_raw_fd()));
    drop(c);
    assert!(peer_closed(d.as_raw_fd()));
}

/// take_fd runs a close hook too, once (SEMANTICS.md §3: a close hook runs
/// exactly once): for a raw watch the hook is what closes the fd, and
/// dropping it unrun leaked the fd and kept the peer from EOF. Found by an
/// audit probe.
#[test]
fn take_fd_runs_the_close_hook_once() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (id, b, runs) = raw_watch_closed_by_its_hook(&lp);
    let _ = lp.run_once();
    assert!(lp.take_fd(id).unwrap().is_none());
    assert_eq!(runs.get(), 1);
    assert!(peer_closed(b.as_raw_fd()), "the hook closed the fd");

    // An owned watch's hook runs as well, and the fd still comes back.
    let (c, d) = socketpair();
    let id = lp.add_fd(c, Interest::READ, |_, _| {}).unwrap();
    let r = runs.clone();
    lp.set_close_hook(id, move |_| r.set(r.get() + 1)).unwrap();
    let _ = lp.run_once();
    let fd = lp.take_fd(id).unwrap().expect("owned watch returns its fd");
    assert_eq!(runs.get(), 2);
    assert!(!peer_closed(d.as_raw_fd()));
    drop(fd);
    assert!(peer_closed(d.as_raw_fd()));
    drop(lp);
    assert_eq!(runs.get(), 2, "no hook runs twice");
}

/// A removed watch's completion never reaches the new watch on the reused fd
/// number (the kernel's completion is injected after reuse).
#[test]
fn stale_completion_after_fd_reuse_is_ignored() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (a, _b) = socketpair();
    let old_raw = a.as_raw_fd();
    let old_ran = Rc::new(Cell::new(0));
    let o = old_ran.clone();
    let old = lp
        .add_fd(a, Interest::READ, move |_, _| o.set(o.get() + 1))
        .unwrap();
    let _ = lp.run_once();
    let stale = lp.in_flight_user_data().unwrap();
    lp.remove_fd(old).unwrap();

    // A new socket that gets the same fd number.
    let (c, d) = socketpair_at(old_raw);
    let new_ran = Rc::new(Cell::new(0));
    let n = new_ran.clone();
    let new = lp
        .add_fd(c, Interest::READ, move |_, _| n.set(n.get() + 1))
        .unwrap();
    assert_eq!(lp.fd_of(new).unwrap(), old_raw);
    for ud in stale {
        lp.inject_completion(ud, libc::POLLIN as i32, 0).unwrap();
    }
    spin(&lp, 5);
    assert_eq!(old_ran.get(), 0);
    assert_eq!(
        new_ran.get(),
        0,
        "the old poll's completion reached the new watch"
    );
    // The new watch works.
    write_fd(d.as_raw_fd(), b"x").unwrap();
    lp.run_once().unwrap();
    assert_eq!(new_ran.get(), 1);
}

/// The same with a real completion: two watches are ready; the first handler
/// removes the second, opens a socket with its fd number and watches it. Only
/// the new handler may ever run for that number, and only when it is ready.
#[test]
fn stale_kernel_completion_after_remove_and_reuse() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let (c, d) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    write_fd(d.as_raw_fd(), b"x").unwrap();
    let victim_raw = c.as_raw_fd();
    let victim_ran = Rc::new(Cell::new(0));
    let v = victim_ran.clone();
    let victim = Rc::new(Cell::new(None::<ringloop::FdId>));
    let vid = victim.clone();
    let new_ran = Rc::new(Cell::new(0));
    let new_peer = Rc::new(Cell::new(None::<OwnedFd>));
    let (n, np) = (new_ran.clone(), new_peer.clone());
    let killer_ran = Rc::new(Cell::new(0));
    let k = killer_ran.clone();
    let killer = lp
        .add_fd(a, Interest::READ, move |lp, ev| {
            k.set(k.get() + 1);
            lp.remove_fd(ev.id).unwrap();
            if let Some(id) = vid.take()
                && lp.remove_fd(id).is_ok()
            {
                let (e, f) = socketpair_at(victim_raw);
                let n = n.clone();
                lp.add_fd(e, Interest::READ, move |_, _| n.set(n.get() + 1))
                    .unwrap();
                np.set(Some(f));
            }
        })
        .unwrap();
    // Added second, so the killer is ahead of it in the ready queue.
    victim.set(Some(
        lp.add_fd(c, Interest::READ, move |_, _| v.set(v.get() + 1))
            .unwrap(),
    ));
    // Both polls complete in the kernel before anything is dispatched.
    spin(&lp, 10);
    assert_eq!(killer_ran.get(), 1);
    assert_eq!(victim_ran.get(), 0);
    assert_eq!(new_ran.get(), 0, "old readiness reached the new watch");
    let f = new_peer.take().unwrap();
    write_fd(f.as_raw_fd(), b"y").unwrap();
    lp.run_once().unwrap();
    assert_eq!(new_ran.get(), 1);
    let _ = killer;
}

/// A socket pair whose first end has fd number `want`, which must be free.
fn socketpair_at(want: RawFd) -> (OwnedFd, OwnedFd) {
    let (c, d) = socketpair();
    // The two ends are alike: either may take the number.
    if c.as_raw_fd() == want {
        return (c, d);
    }
    if d.as_raw_fd() == want {
        return (d, c);
    }
    // SAFETY: fcntl only reads the descriptor table.
    assert!(
        unsafe { libc::fcntl(want, libc::F_GETFD) } < 0,
        "fd {want} is taken"
    );
    // SAFETY: `want` is free; we own the duplicate; `c` is closed on drop.
    let got = unsafe { libc::dup3(c.as_raw_fd(), want, libc::O_CLOEXEC) };
    assert_eq!(got, want, "dup3: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd owned by nobody else.
    (unsafe { OwnedFd::from_raw_fd(got) }, d)
}

/// EBADF: add_raw_fd of a closed fd is refused.
#[test]
fn add_raw_fd_of_closed_fd_is_bad_fd() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let raw = a.as_raw_fd();
    drop(a);
    drop(b);
    // SAFETY: the call must refuse the closed fd; nothing is watched.
    let r = unsafe { lp.add_raw_fd(raw, Interest::READ, |_, _| {}) };
    assert!(matches!(r, Err(Error::BadFd(n)) if n == raw));
    // SAFETY: as above.
    let r = unsafe { lp.add_raw_fd(-1, Interest::READ, |_, _| {}) };
    assert!(matches!(r, Err(Error::BadFd(-1))));
}

/// An fd closed behind the loop's back: the watch is disarmed, fd_error says
/// EBADF, and the loop keeps running.
#[test]
fn fd_closed_behind_the_loops_back_disarms_the_watch() {
    let _s = serial();
    let lp = loop_with_timeout(std::time::Duration::from_millis(50));
    let (r, w) = pipe();
    write_fd(w.as_raw_fd(), b"x").unwrap();
    let raw = r.into_raw_fd();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    // SAFETY: deliberately broken: the handler closes the fd while watched.
    let id = unsafe {
        lp.add_raw_fd(raw, Interest::READ, move |_, _| {
            c.set(c.get() + 1);
            // SAFETY: closes our own pipe end behind the loop's back.
            libc::close(raw);
        })
    }
    .unwrap();
    // A second, healthy watch and a timer keep the loop busy.
    let (x, y) = socketpair();
    write_fd(y.as_raw_fd(), b"x").unwrap();
    let healthy = Rc::new(Cell::new(0));
    let h = healthy.clone();
    let hid = lp
        .add_fd(x, Interest::READ, move |_, _| h.set(h.get() + 1))
        .unwrap();
    let timer_ran = Rc::new(Cell::new(false));
    let t = timer_ran.clone();
    lp.add_timer(std::time::Duration::from_millis(1), move |_| t.set(true))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    for _ in 0..10 {
        lp.run_once().unwrap();
    }
    assert_eq!(calls.get(), 1, "the closed fd's handler ran again");
    assert_eq!(lp.interest(id).unwrap(), Interest::NONE);
    let err = lp.fd_error(id).unwrap().expect("an error is reported");
    assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    assert!(
        healthy.get() >= 3,
        "healthy watch starved: {}",
        healthy.get()
    );
    assert!(timer_ran.get());
    lp.remove_fd(hid).unwrap();
    lp.remove_fd(id).unwrap();
    lp.run().unwrap();
    drop(w);
}

/// Closing right after add_raw_fd (before the poll was submitted) gives EBADF too.
#[test]
fn fd_closed_before_first_submit() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (r, _w) = pipe();
    let raw = r.into_raw_fd();
    // SAFETY: deliberately broken: the fd is closed right after.
    let id = unsafe { lp.add_raw_fd(raw, Interest::READ, |_, _| panic!("closed")) }.unwrap();
    // SAFETY: our own fd.
    unsafe { libc::close(raw) };
    spin(&lp, 5);
    assert_eq!(lp.interest(id).unwrap(), Interest::NONE);
    assert_eq!(
        lp.fd_error(id).unwrap().and_then(|e| e.raw_os_error()),
        Some(libc::EBADF)
    );
    assert!(!lp.has_events().unwrap());
    // Re-arming a good fd clears the error.
    let _ = EventLoop::new().unwrap();
}

/// take_fd from inside the watch's own handler and watch the fd again: the
/// connection stays open and the new watch gets the (still unread) data.
#[test]
fn take_fd_and_rewatch_inside_handler() {
    let _s = serial();
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let second = Rc::new(Cell::new(0));
    let s = second.clone();
    lp.add_fd(a, Interest::READ, move |lp, ev| {
        let fd = lp.take_fd(ev.id).unwrap().unwrap();
        let s = s.clone();
        lp.add_fd(fd, Interest::READ, move |lp, ev| {
            s.set(s.get() + 1);
            lp.remove_fd(ev.id).unwrap();
        })
        .unwrap();
    })
    .unwrap();
    lp.run_once().unwrap();
    assert!(!peer_closed(b.as_raw_fd()));
    lp.run_once().unwrap();
    assert_eq!(second.get(), 1);
    assert!(peer_closed(b.as_raw_fd()));
}

/// Found by the pipe benchmark: with hundreds of deferred wake-ups pending,
/// one `io_uring_enter(GETEVENTS)` runs only a batch of them, so a single
/// flush may not reach the cancelled poll and the peer saw no EOF yet.
#[test]
fn remove_fd_with_a_backlog_of_wakeups_still_closes_at_once() {
    use std::io::{Read, Write};
    let _s = serial();
    let lp = EventLoop::builder()
        .wait_timeout(ringloop::WaitTimeout::Never)
        .build()
        .unwrap();
    let (mut peers, mut ids) = (Vec::new(), Vec::new());
    for _ in 0..600 {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        ids.push(lp.add_fd(a.into(), Interest::READ, |_, _| {}).unwrap());
        peers.push(b);
    }
    let _ = lp.run_once();
    for b in &mut peers {
        b.write_all(b"x").unwrap();
    }
    for (i, id) in ids.iter().enumerate().rev().step_by(97) {
        lp.remove_fd(*id).unwrap();
        let r = peers[i].read(&mut [0u8; 1]);
        assert!(
            !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "peer {i} saw nothing after remove_fd: {r:?}"
        );
    }
    drop(lp);
    for (i, b) in peers.iter_mut().enumerate() {
        let r = b.read(&mut [0u8; 1]);
        assert!(
            !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "peer {i} saw nothing after the loop was dropped: {r:?}"
        );
    }
}

/// Found by prop_reactor: a raw watch whose poll was cancelled by an
/// interest change (still queued, not yet seen by the kernel) and then
/// removed left the kernel holding the file, so closing the fd right after
/// `remove_fd` gave the peer no EOF.
#[test]
fn raw_watch_disarmed_then_removed_lets_go_of_the_file() {
    let _s = serial();
    let lp = EventLoop::builder()
        .wait_timeout(ringloop::WaitTimeout::Never)
        .build()
        .unwrap();
    let (a, b) = socketpair();
    let raw = a.as_raw_fd();
    // SAFETY: `a` stays open until after the watch is removed.
    let id = unsafe { lp.add_raw_fd(raw, Interest::READ, |_, _| {}) }.unwrap();
    let _ = lp.run_once(); // the poll is now in the kernel
    lp.set_interest(id, Interest::NONE).unwrap(); // cancel queued only
    lp.remove_fd(id).unwrap();
    drop(a);
    assert!(
        peer_closed(b.as_raw_fd()),
        "the kernel still holds the file"
    );
}

/// `Handle::flush`'s documented use, with the kernel busy: after
/// `cancel_op` of a multishot poll and a flush, closing the fd gives the
/// peer EOF at once, although 200 other fds had just become ready (on a
/// `DEFER_TASKRUN` ring one `io_uring_enter` runs only a batch of that work,
/// and the cancelled poll's end may sit behind it). Found by an audit probe.
#[test]
fn cancel_op_then_flush_releases_the_file_behind_a_backlog() {
    use std::io::Write;
    let _s = serial();
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    let entry =
        io_uring::opcode::PollAdd::new(io_uring::types::Fd(a.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build();
    // SAFETY: POLL_ADD points at no memory; `a` outlives the poll's hold on
    // the file, which is what the test checks.
    let op = unsafe { lp.submit_multishot(entry, |_, _| {}) }.unwrap();
    let mut peers = Vec::new();
    for _ in 0..200 {
        let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        lp.add_fd(x.into(), Interest::READ, |_, _| {}).unwrap();
        peers.push(y);
    }
    let _ = lp.run_once(); // every poll is in the kernel
    for y in &mut peers {
        y.write_all(b"x").unwrap();
    }
    lp.cancel_op(op).unwrap();
    lp.flush().unwrap();
    drop(a);
    assert!(
        peer_closed(b.as_raw_fd()),
        "the kernel still holds the file"
    );
    // The readiness the flush brought in is still dispatched.
    let before = lp.stats().unwrap().handlers;
    for _ in 0..1000 {
        if lp.stats().unwrap().handlers - before >= 200 {
            break;
        }
        let _ = lp.run_once();
    }
    assert!(lp.stats().unwrap().handlers - before >= 200);
}
