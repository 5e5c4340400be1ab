//! SEMANTICS.md §7: the ring itself (features, CQ overflow, generic
//! submission), plus trace points and the fallback setup.

mod common;

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use io_uring::{opcode, types};
use ringloop::{Completion, Error, EventKind, EventLoop, Interest, TracePoint, WaitTimeout};

/// Setup probes the kernel and reports it.
#[test]
fn features_are_reported() {
    let lp = EventLoop::builder()
        .sq_entries(32)
        .cq_entries(64)
        .build()
        .unwrap();
    let f = lp.features().unwrap();
    assert!(!f.kernel.is_empty());
    assert!(f.ext_arg && f.nodrop, "{f:?}");
    assert!(f.supports_opcode(opcode::PollAdd::CODE));
    assert!(f.supports_opcode(opcode::AsyncCancel::CODE));
    assert!(f.supports_opcode(opcode::Nop::CODE));
    assert!(!f.opcodes().is_empty());
    assert!(f.sq_entries >= 32, "{f:?}");
    assert!(f.cq_entries >= 64, "{f:?}");
    if f.defer_taskrun {
        assert!(f.single_issuer, "DEFER_TASKRUN requires SINGLE_ISSUER");
    }
    let plain = EventLoop::builder().plain_setup(true).build().unwrap();
    let p = plain.features().unwrap();
    assert!(
        !p.single_issuer && !p.defer_taskrun && !p.submit_all,
        "{p:?}"
    );
}

/// A required feature that is missing gives an error naming it.
#[test]
fn missing_feature_is_a_clear_error() {
    for name in [
        "IORING_FEAT_EXT_ARG",
        "IORING_FEAT_NODROP",
        "IORING_OP_POLL_ADD",
    ] {
        let err = EventLoop::builder()
            .simulate_missing_feature(name)
            .build()
            .err()
            .unwrap_or_else(|| panic!("{name}: built anyway"));
        assert!(matches!(err, Error::KernelTooOld { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(name), "{msg}");
    }
}

/// The fallback setup (no SINGLE_ISSUER / DEFER_TASKRUN) keeps the semantics:
/// level-triggered reads, close means closed, timers and remote wake-ups.
#[test]
fn plain_setup_keeps_semantics() {
    let lp = EventLoop::builder()
        .plain_setup(true)
        .wait_timeout(WaitTimeout::After(Duration::from_secs(5)))
        .build()
        .unwrap();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let id = lp
        .add_fd(a, Interest::READ, move |_, _| c.set(c.get() + 1))
        .unwrap();
    for _ in 0..3 {
        lp.run_once().unwrap();
    }
    assert_eq!(calls.get(), 3);
    lp.remove_fd(id).unwrap();
    assert!(peer_closed(b.as_raw_fd()));
    let remote = lp.remote().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        remote.schedule(|_| {}).unwrap();
    });
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    lp.add_timer(Duration::from_millis(5), move |_| r.set(true))
        .unwrap();
    lp.run().unwrap();
    t.join().unwrap();
    assert!(ran.get());
}

/// A loop whose CQ (16 entries) is easy to overflow.
fn small_cq_loop() -> EventLoop {
    EventLoop::builder()
        .sq_entries(8)
        .cq_entries(16)
        .wait_timeout(WaitTimeout::After(Duration::from_millis(100)))
        .build()
        .unwrap()
}

/// A full completion queue loses nothing: 100 ready sockets on a ring with a
/// 16-entry CQ all get their handler run.
#[test]
fn cq_overflow_loses_nothing() {
    let lp = small_cq_loop();
    let ran = Rc::new(RefCell::new(vec![0u32; 100]));
    let mut peers = Vec::new();
    for i in 0..100 {
        let (a, b) = socketpair();
        write_fd(b.as_raw_fd(), b"x").unwrap();
        peers.push(b);
        let r = ran.clone();
        lp.add_fd(a, Interest::READ, move |lp, ev| {
            r.borrow_mut()[i] += 1;
            lp.remove_fd(ev.id).unwrap();
        })
        .unwrap();
    }
    // Also 50 NOPs, to overflow with operation completions.
    let nops = Rc::new(Cell::new(0));
    for _ in 0..50 {
        let n = nops.clone();
        // SAFETY: NOP points at no memory.
        unsafe { lp.submit(opcode::Nop::new().build(), move |_, _| n.set(n.get() + 1)) }.unwrap();
    }
    let mut iterations = 0;
    while lp.has_events().unwrap() {
        lp.run_once().unwrap();
        iterations += 1;
        assert!(iterations < 2000, "stuck: {:?}", lp.stats());
    }
    assert!(ran.borrow().iter().all(|&n| n == 1), "{:?}", ran.borrow());
    assert_eq!(nops.get(), 50);
    for b in &peers {
        assert!(peer_closed(b.as_raw_fd()));
    }
    let stats = lp.stats().unwrap();
    eprintln!("overflow test: {stats:?}");
    assert_eq!(
        stats.in_flight, 1,
        "only the wake-up poll is left: {stats:?}"
    );
}

/// The same for futures' operations, whose completions take their own path
/// (stored in the loop's table and woken at reap): 200 NOPs submitted at once
/// on a 16-entry CQ all resolve.
#[test]
fn cq_overflow_loses_no_future_operation() {
    let lp = small_cq_loop();
    let handle = lp.handle();
    let rt = ringloop::rt::Runtime::with_loop(lp).unwrap();
    let results = rt.block_on(async {
        let ops: Vec<_> = (0..200u32)
            // SAFETY: NOP points at no memory.
            .map(|i| unsafe { ringloop::op::submit(opcode::Nop::new().build(), i) })
            .collect();
        let mut results = Vec::new();
        for op in ops {
            let (c, i) = op.await;
            results.push((c.result, i));
        }
        results
    });
    let expected: Vec<(i32, u32)> = (0..200).map(|i| (0, i)).collect();
    assert_eq!(results, expected);
    let stats = handle.stats().unwrap();
    assert!(
        stats.overflow_flushes > 0,
        "the CQ never overflowed: {stats:?}"
    );
}

/// NOP through the generic API: the callback runs once, in a later iteration.
#[test]
fn submit_nop() {
    let lp = nonblocking_loop();
    let got = Rc::new(Cell::new(None));
    let g = got.clone();
    // SAFETY: NOP points at no memory.
    unsafe { lp.submit(opcode::Nop::new().build(), move |_, c| g.set(Some(c))) }.unwrap();
    assert!(got.get().is_none(), "ran inside submit");
    assert!(lp.has_events().unwrap(), "an in-flight op keeps run going");
    lp.run().unwrap();
    assert_eq!(got.get().map(|c: Completion| c.result), Some(0));
    assert!(!got.get().unwrap().has_more());
}

/// A READ into a buffer owned by the callback.
#[test]
fn submit_read_into_owned_buffer() {
    let lp = loop_with_timeout(Duration::from_millis(20));
    let (r, w) = blocking_pipe();
    let mut buf = vec![0u8; 64].into_boxed_slice();
    let entry = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 64).build();
    let out = Rc::new(RefCell::new(None));
    let o = out.clone();
    // SAFETY: `buf` moves into the callback, so it outlives the operation.
    unsafe {
        lp.submit(entry, move |_, c| {
            let n = c.result().unwrap() as usize;
            *o.borrow_mut() = Some(buf[..n].to_vec());
        })
    }
    .unwrap();
    let _ = lp.run_once();
    assert!(out.borrow().is_none(), "read completed with no data");
    write_fd(w.as_raw_fd(), b"hello ring").unwrap();
    lp.run().unwrap();
    assert_eq!(out.borrow().as_deref(), Some(&b"hello ring"[..]));
}

/// cancel_op of a READ on an empty pipe: the callback gets -ECANCELED once.
#[test]
fn cancel_op_gives_ecanceled_once() {
    let lp = loop_with_timeout(Duration::from_millis(20));
    let (r, _w) = blocking_pipe();
    let mut buf = vec![0u8; 16].into_boxed_slice();
    let entry = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 16).build();
    let results = log::<i32>();
    let res = results.clone();
    // SAFETY: `buf` moves into the callback.
    let id = unsafe {
        lp.submit(entry, move |_, c| {
            let _ = &buf;
            res.borrow_mut().push(c.result);
        })
    }
    .unwrap();
    let _ = lp.run_once();
    lp.cancel_op(id).unwrap();
    lp.cancel_op(id).unwrap(); // a second cancel before completion is harmless
    lp.set_wait_timeout(WaitTimeout::After(Duration::from_secs(10)))
        .unwrap();
    let start = std::time::Instant::now();
    lp.run().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "cancel did not complete"
    );
    assert_eq!(*results.borrow(), [-libc::ECANCELED]);
    assert!(matches!(lp.cancel_op(id), Err(Error::NotFound)));
    assert_eq!(lp.stats().unwrap().in_flight, 1);
}

/// A multishot operation: the callback runs per completion until the last.
#[test]
fn submit_multishot_poll() {
    let lp = nonblocking_loop();
    let (r, w) = pipe();
    let seen = log::<Completion>();
    let s = seen.clone();
    let entry = opcode::PollAdd::new(types::Fd(r.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build();
    // SAFETY: POLL_ADD points at no memory.
    let id = unsafe { lp.submit_multishot(entry, move |_, c| s.borrow_mut().push(c)) }.unwrap();
    spin(&lp, 3);
    assert!(seen.borrow().is_empty());
    write_fd(w.as_raw_fd(), b"x").unwrap();
    spin(&lp, 3);
    assert_eq!(seen.borrow().len(), 1);
    assert!(seen.borrow()[0].has_more());
    lp.cancel_op(id).unwrap();
    spin(&lp, 5);
    let last = *seen.borrow().last().unwrap();
    assert!(!last.has_more());
    assert!(!lp.has_events().unwrap());
}

/// Trace points for a simple fd iteration and an immediate.
#[test]
fn trace_points_of_a_simple_iteration() {
    let lp = nonblocking_loop();
    let points = Rc::new(RefCell::new(Vec::new()));
    let p = points.clone();
    lp.set_trace_hook(Some(Box::new(move |tp| p.borrow_mut().push(tp))));
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let id = lp.add_fd(a, Interest::READ, |_, _| {}).unwrap();
    lp.run_once().unwrap();
    assert_eq!(
        *points.borrow(),
        [
            TracePoint::Attach(EventKind::Fd),
            TracePoint::BeforeWait,
            TracePoint::AfterWait,
            TracePoint::BeforeHandler(EventKind::Fd),
        ]
    );
    points.borrow_mut().clear();
    lp.add_immediate(|_| {}).unwrap();
    lp.run_once().unwrap();
    lp.remove_fd(id).unwrap();
    let t = lp.add_timer(Duration::from_secs(1), |_| {}).unwrap();
    lp.cancel_timer(t).unwrap();
    assert_eq!(
        *points.borrow(),
        [
            TracePoint::Attach(EventKind::Immediate),
            TracePoint::BeforeHandler(EventKind::Immediate),
            TracePoint::Detach(EventKind::Fd),
            TracePoint::Attach(EventKind::Timer),
            TracePoint::Detach(EventKind::Timer),
        ]
    );
    lp.set_trace_hook(None);
    points.borrow_mut().clear();
    lp.add_immediate(|_| {}).unwrap();
    lp.run_once().unwrap();
    assert!(points.borrow().is_empty());
}

/// CQ overflow while other threads wake the loop: the multishot wake-up poll
/// may be ended by the overflow, and must be re-armed (no lost wake-ups).
#[test]
fn cq_overflow_with_remote_wakeups() {
    let lp = EventLoop::builder()
        .sq_entries(4)
        .cq_entries(8)
        .wait_timeout(WaitTimeout::After(Duration::from_millis(50)))
        .build()
        .unwrap();
    let remote = lp.remote().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    let t = std::thread::spawn(move || {
        for i in 0..200 {
            let c = c.clone();
            remote
                .schedule(move |_| {
                    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                })
                .unwrap();
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let mut peers = Vec::new();
    let fd_runs = Rc::new(Cell::new(0));
    for _ in 0..64 {
        let (a, b) = socketpair();
        write_fd(b.as_raw_fd(), b"x").unwrap();
        peers.push(b);
        let f = fd_runs.clone();
        lp.add_fd(a, Interest::READ, move |lp, ev| {
            f.set(f.get() + 1);
            lp.remove_fd(ev.id).unwrap();
        })
        .unwrap();
    }
    let start = std::time::Instant::now();
    while count.load(std::sync::atomic::Ordering::Relaxed) < 200 || fd_runs.get() < 64 {
        lp.run_once().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "lost: {} remote, {} fds, {:?}",
            count.load(std::sync::atomic::Ordering::Relaxed),
            fd_runs.get(),
            lp.stats()
        );
    }
    t.join().unwrap();
}

/// zio#623: cancels that meet a full SQ are submitted, never dropped. 100
/// armed watches lose their interest at once on an 8-entry SQ (100 poll
/// removals queued in one go, nothing else); every poll is gone from the
/// kernel afterwards, and every watch works again when its interest comes
/// back.
#[test]
fn cancels_through_a_full_sq_are_all_submitted() {
    let lp = small_cq_loop();
    let ran = Rc::new(RefCell::new(vec![0u32; 100]));
    let mut ids = Vec::new();
    let mut peers = Vec::new();
    for i in 0..100 {
        let (a, b) = socketpair();
        peers.push(b);
        let r = ran.clone();
        ids.push(
            lp.add_fd(a, Interest::READ, move |lp, ev| {
                r.borrow_mut()[i] += 1;
                lp.remove_fd(ev.id).unwrap();
            })
            .unwrap(),
        );
    }
    // Arm the 100 polls (the loop waits once: nothing is readable).
    lp.set_wait_timeout(WaitTimeout::Never).unwrap();
    let _ = lp.run_once();
    let armed = lp.stats().unwrap().in_flight;
    assert!(armed > 100, "polls armed: {:?}", lp.stats());
    for &id in &ids {
        lp.set_interest(id, Interest::NONE).unwrap();
    }
    // One iteration submits the 100 removals (13 SQ-fulls of them) and
    // reaps what the kernel hands back.
    let _ = lp.run_once();
    assert_eq!(
        lp.stats().unwrap().in_flight,
        armed - 100,
        "every cancelled poll was handed back: {:?}",
        lp.stats()
    );
    // Data now wakes nobody ...
    for b in &peers {
        write_fd(b.as_raw_fd(), b"x").unwrap();
    }
    let _ = lp.run_once();
    assert!(ran.borrow().iter().all(|&n| n == 0), "{:?}", ran.borrow());
    // ... until the interest is back.
    for &id in &ids {
        lp.set_interest(id, Interest::READ).unwrap();
    }
    lp.set_wait_timeout(WaitTimeout::After(Duration::from_millis(100)))
        .unwrap();
    run_until(&lp, 2000, || !lp.has_events().unwrap());
    assert!(ran.borrow().iter().all(|&n| n == 1), "{:?}", ran.borrow());
}

/// zio#623's own case: many timeouts fire at once on a small SQ, each
/// cancelling a read. Every task finishes, every read is handed back by the
/// kernel, and the streams still work.
#[test]
fn many_timeouts_firing_at_once_cancel_every_read() {
    let lp = small_cq_loop();
    let handle = lp.handle();
    let rt = ringloop::rt::Runtime::with_loop(lp).unwrap();
    rt.block_on(async {
        let base = handle.stats().unwrap().in_flight;
        let pairs: Vec<_> = (0..64)
            .map(|_| Rc::new(ringloop::net::UnixStream::pair().unwrap()))
            .collect();
        let tasks: Vec<_> = pairs
            .iter()
            .map(|p| {
                let p = p.clone();
                ringloop::rt::spawn(async move {
                    let r = ringloop::time::timeout(
                        Duration::from_millis(20),
                        p.0.read(Vec::with_capacity(8)),
                    )
                    .await;
                    r.is_err()
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap(), "the read timed out");
        }
        // The cancels reach the kernel at the next wait.
        ringloop::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            handle.stats().unwrap().in_flight,
            base,
            "every cancelled read was handed back: {:?}",
            handle.stats()
        );
        for p in &pairs {
            p.1.write_all(b"y".to_vec()).await.0.unwrap();
            let (r, buf) = p.0.read(Vec::with_capacity(8)).await;
            assert_eq!((r.unwrap(), &buf[..]), (1, &b"y"[..]));
        }
    });
}

/// A loop that never blocks, on the default or the plain ring set-up.
fn never_blocking(plain: bool) -> EventLoop {
    EventLoop::builder()
        .wait_timeout(WaitTimeout::Never)
        .plain_setup(plain)
        .build()
        .unwrap()
}

/// A non-blocking iteration with nothing queued for the kernel and no
/// completion work deferred in it stays in user space: the turns a busy
/// executor takes between polls cost no syscall. A ring that cannot say
/// whether the kernel holds deferred work (no `SETUP_TASKRUN_FLAG`, as on
/// the plain setup) enters on every such turn.
#[test]
fn idle_non_blocking_turns_make_no_syscall() {
    for plain in [false, true] {
        let lp = never_blocking(plain);
        // A remote makes the loop arm its wake-up poll: an SQE to submit.
        let _remote = lp.remote().unwrap();
        assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
        let before = lp.stats().unwrap().enters;
        for _ in 0..100 {
            assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
        }
        let made = lp.stats().unwrap().enters - before;
        let f = lp.features().unwrap();
        let expected = if f.taskrun_flag { 0 } else { 100 };
        assert_eq!(made, expected, "plain setup {plain}: {f:?}");
    }
}

/// ...but a non-blocking iteration still sees what the kernel has: a
/// readiness it holds as deferred task work (on a `DEFER_TASKRUN` ring a
/// poll's completion reaches the CQ only inside `io_uring_enter`), a
/// cross-thread wake, and a watch whose poll is still to be submitted.
#[test]
fn non_blocking_turns_still_see_deferred_completions() {
    for plain in [false, true] {
        let lp = never_blocking(plain);
        let (a, b) = socketpair();
        let reads = Rc::new(Cell::new(0));
        let seen = reads.clone();
        lp.add_fd(a, Interest::READ, move |_, ev| {
            let _ = read_fd(ev.fd, 16);
            seen.set(seen.get() + 1);
        })
        .unwrap();
        // The watch's POLL_ADD is queued: this turn submits it, and the
        // fd is not ready yet.
        assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
        assert_eq!(reads.get(), 0);
        write_fd(b.as_raw_fd(), b"x").unwrap();
        // Delivery may take more than one turn while the kernel posts it;
        // bounded, and never a blocking wait.
        run_until(&lp, 50, || reads.get() == 1);

        let remote = lp.remote().unwrap();
        assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
        let ran = Arc::new(AtomicBool::new(false));
        let set = ran.clone();
        std::thread::spawn(move || remote.schedule(move |_| set.store(true, Ordering::SeqCst)))
            .join()
            .unwrap()
            .unwrap();
        run_until(&lp, 50, || ran.load(Ordering::SeqCst));
    }
}

/// An immediate that schedules itself again keeps the loop from ever
/// waiting (§1.3), and a due timer does the same. Handlers still run in
/// strict order, but what is queued for the kernel is submitted and what
/// completes is reaped all the same: a WRITE submitted meanwhile reaches
/// the peer, and its callback runs once the burst ends.
#[test]
fn submissions_reach_the_kernel_while_handlers_are_always_due() {
    fn again(h: &ringloop::Handle, left: Rc<Cell<u32>>, timer: bool) {
        if left.get() == 0 {
            return;
        }
        left.set(left.get() - 1);
        if timer {
            h.add_timer(Duration::ZERO, move |h| again(h, left, true))
                .unwrap();
        } else {
            h.add_immediate(move |h| again(h, left, false)).unwrap();
        }
    }
    for timer in [false, true] {
        let lp = loop_with_timeout(Duration::from_secs(5));
        let (a, b) = socketpair();
        let left = Rc::new(Cell::new(1000));
        again(&lp, left.clone(), timer);
        let data = b"through the ring".to_vec();
        let entry = opcode::Write::new(types::Fd(a.as_raw_fd()), data.as_ptr(), 16).build();
        let wrote = Rc::new(Cell::new(None));
        let w = wrote.clone();
        // SAFETY: `data` moves into the callback, so it outlives the write.
        unsafe { lp.submit(entry, move |_, c| w.set(Some((c.result, data.len())))) }.unwrap();
        let mut turns = 0;
        let mut got = Vec::new();
        while got.is_empty() && turns < 500 {
            lp.run_once().unwrap();
            turns += 1;
            got = recv_now(b.as_raw_fd(), 64).unwrap_or_default();
        }
        assert_eq!(got, b"through the ring", "timer={timer}: {turns} turns");
        assert!(left.get() > 0, "timer={timer}: the burst ended first");
        assert_eq!(
            wrote.get(),
            None,
            "timer={timer}: its callback ran inside the burst"
        );
        run_until(&lp, 2000, || wrote.get().is_some());
        assert_eq!(wrote.get(), Some((16, 16)), "timer={timer}");
        assert_eq!(left.get(), 0, "timer={timer}");
    }
}
