//! Regression tests for bugs the property tests and fuzzers found.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use ringloop::{Builder, Completion, Interest, WaitTimeout};

/// Some checks count the process's open fds: run one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// cqe_dispatch: a poll completion with result `i32::MIN` overflowed when
/// negated into an errno (a panic in debug builds). It must disarm the
/// watch like any other error.
#[test]
fn poll_result_i32_min_disarms_without_panic() {
    let _g = serial();
    let lp = Builder::default()
        .wait_timeout(WaitTimeout::Never)
        .build()
        .unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let id = lp
        .add_fd(OwnedFd::from(a), Interest::READ, |_, _| {
            panic!("must not run")
        })
        .unwrap();
    let _ = lp.run_once();
    for ud in lp.in_flight_user_data().unwrap() {
        lp.inject_completion(ud, i32::MIN, 0).unwrap();
    }
    let _ = lp.run_once();
    assert!(lp.fd_error(id).unwrap().is_some());
    assert!(lp.interest(id).unwrap().is_empty());
    lp.remove_fd(id).unwrap();
}

/// The same overflow in `Completion::result`.
#[test]
fn completion_result_i32_min_is_an_error() {
    let _g = serial();
    let c = Completion {
        result: i32::MIN,
        flags: 0,
    };
    assert!(c.result().is_err());
}

#[path = "model/mod.rs"]
mod model;

/// Found by prop_reactor (ops_match_the_model): a raw watch whose poll had
/// already fired was removed, and its poll cancel was only queued, not
/// handed to the kernel, so an operation stayed in flight and a caller that
/// closed the fd right after `remove_fd` left the file held (no EOF). Fixed
/// by flushing the cancel whenever the removed watch had a poll armed.
#[test]
fn raw_watch_removal_leaves_an_operation_in_flight() {
    let _g = serial();
    model::ops::check_ops(&[
        27, 120, 0, 0, 0, 0, 0, 0, 0, 0, 11, 32, 0, 0, 0, 0, 0, 0, 0, 11, 101, 0, 0, 0, 0, 0, 0, 0,
        6, 0, 0, 204, 67, 125, 0, 0, 0, 19, 0, 0, 0, 0, 0, 1, 0, 0, 4, 0, 13, 6, 5, 0, 0, 0, 0, 0,
        0, 0, 64, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 21, 0, 0, 211, 139, 0, 40, 0, 0, 0, 0, 0, 206, 0, 0, 40, 0, 0, 206, 0, 0,
        100, 0, 0, 0, 0, 0, 81, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 17, 0, 0, 124, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 21, 0, 0, 18, 139, 0, 0, 0, 0, 17, 0, 0,
        0, 0, 0, 0,
    ]);
}

/// Found by prop_reactor (ops_match_the_model) once the model covered
/// WRITE-only watches that see only RDHUP: the loop arms a multishot poll
/// for such a watch (`Decision::WaitQuietly`). Removing the watch before the
/// next `io_uring_enter` put the multishot POLL_ADD and its POLL_REMOVE into
/// one submission; the poll completed at arm time (task work pending), so
/// POLL_REMOVE failed with EALREADY and the multishot poll stayed armed for
/// ever, holding the file: the peer never saw EOF and an operation stayed
/// in flight. Fixed by cancelling polls with ASYNC_CANCEL.
#[test]
fn quiet_writer_removed_before_its_poll_was_submitted_closes() {
    let _g = serial();
    use std::cell::Cell;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::rc::Rc;

    let lp = Builder::default()
        .wait_timeout(WaitTimeout::Never)
        .build()
        .unwrap();
    let baseline = lp.stats().unwrap().in_flight;
    let (a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let (r, mut w) = std::io::pipe().unwrap();
    let watch = lp
        .add_fd(OwnedFd::from(a), Interest::ERROR, |_, ev| {
            assert!(!ev.ready.is_empty());
        })
        .unwrap();
    let removed = Rc::new(Cell::new(false));
    let rm = removed.clone();
    // A user poll on a pipe, woken after the watch: its completion comes
    // after the watch's in the ready queue. It removes the watch.
    // SAFETY: the entry points at no memory; `r` outlives the loop's use
    // of it (the poll completes before the test ends).
    unsafe {
        lp.submit(
            io_uring::opcode::PollAdd::new(io_uring::types::Fd(r.as_raw_fd()), libc::POLLIN as u32)
                .build(),
            move |h, _| {
                h.remove_fd(watch).unwrap();
                rm.set(true);
            },
        )
        .unwrap();
    }
    let _ = lp.run_once(); // submits both polls; nothing is ready
    b.shutdown(std::net::Shutdown::Write).unwrap(); // the watch sees RDHUP
    w.write_all(b"x").unwrap(); // the pipe poll fires
    // A NOP completes at submit, before both polls: it turns the watch
    // into a WRITE-only one whose harvested revents are RDHUP alone.
    // SAFETY: a NOP points at no memory.
    unsafe {
        lp.submit(io_uring::opcode::Nop::new().build(), move |h, _| {
            // On a ring without DEFER_TASKRUN the pipe poll may complete
            // first and remove the watch: then there is nothing to change.
            let _ = h.set_interest(watch, Interest::WRITE);
        })
        .unwrap();
    }
    for _ in 0..6 {
        let _ = lp.run_once();
    }
    assert!(removed.get());
    // The watch owned `a`: the peer sees EOF (ECONNRESET is fine too).
    let mut buf = [0u8; 8];
    match std::io::Read::read(&mut &b, &mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("peer does not see the close: {other:?}"),
    }
    assert_eq!(lp.stats().unwrap().in_flight, baseline);
    drop(r);
}

/// Found while fuzzing cqe_dispatch (inputs that took seconds): when the
/// loop was dropped with two completions of one multishot operation queued
/// (one with F_MORE, then the final one), the teardown took the callback
/// for the first and then skipped the final one, so the operation was never
/// removed and the drop waited for its 5 s deadline. Teardown now delivers
/// the queued completions one at a time, in order.
#[test]
fn dropping_the_loop_with_queued_multishot_completions_is_quick() {
    let _g = serial();
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    let lp = Builder::default()
        .wait_timeout(WaitTimeout::Never)
        .build()
        .unwrap();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    // SAFETY: a NOP points at no memory.
    let id = unsafe {
        lp.submit_multishot(io_uring::opcode::Nop::new().build(), move |_, _| {
            c.set(c.get() + 1);
        })
    }
    .unwrap();
    let ud = {
        use slotmap::Key;
        id.data().as_ffi()
    };
    // Two completions of the operation, as a multishot one posts them:
    // IORING_CQE_F_MORE (1 << 1), then the final one.
    lp.inject_completion(ud, 0, 1 << 1).unwrap();
    lp.inject_completion(ud, 0, 0).unwrap();
    let t = Instant::now();
    drop(lp);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t.elapsed()
    );
    assert_eq!(calls.get(), 2, "both queued completions are delivered");
}
