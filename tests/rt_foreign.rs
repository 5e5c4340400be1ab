//! Futures bound to one runtime's loop, awaited by a task of another runtime
//! on the same thread while the first one is alive but idle: each gives a
//! clear error or moves, never hangs (the first loop does not run while the
//! second one waits). Each wait runs under a timeout on the polling
//! runtime, so a hang reports as `Elapsed` instead of hanging the test.

mod common;

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::poll_once_on;
use io_uring::{opcode, types};
use ringloop::net::UnixStream;
use ringloop::rt::{self, Runtime};
use ringloop::{op, time};

const LIMIT: Duration = Duration::from_secs(5);

/// A 16-byte read of `fd`, submitted on the current runtime.
fn submit_read(fd: &impl AsRawFd) -> op::Op<Vec<u8>> {
    let buf = vec![0u8; 16];
    let entry = opcode::Read::new(types::Fd(fd.as_raw_fd()), buf.as_ptr().cast_mut(), 16).build();
    // SAFETY: the buffer is moved into the operation; the fd outlives it.
    unsafe { op::submit(entry, buf) }
}

/// A read submitted on one runtime and awaited on another, while the first
/// is idle: it is cancelled on its own loop and resolves at once with
/// `-ECANCELED`, its buffer back. The first loop has nothing of it left.
#[test]
fn an_op_in_flight_polled_on_another_runtime_resolves_cancelled() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let (r, _w) = common::pipe();
    first.block_on(async {});
    let idle = first.handle().stats().unwrap().in_flight;
    let mut read = first.block_on(async { Some(submit_read(&r)) }).unwrap();
    poll_once_on(&first, &mut read);
    let out = second.block_on(time::timeout(LIMIT, &mut read));
    let (c, buf) = out.expect("the operation hung on the second runtime");
    assert_eq!(c.result, -libc::ECANCELED, "{c:?}");
    assert_eq!(buf.len(), 16);
    assert!(!first.handle().has_events().unwrap());
    assert_eq!(first.handle().stats().unwrap().in_flight, idle);
}

/// The same through a waker that is no runtime task's (a combinator's, or
/// another executor's inside the second runtime): the op is told apart by
/// which runtime is current instead, and resolves in that one poll.
#[test]
fn an_op_polled_on_another_runtime_with_a_foreign_waker_resolves() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let (r, _w) = common::pipe();
    let mut read = first.block_on(async { Some(submit_read(&r)) }).unwrap();
    poll_once_on(&first, &mut read);
    let polled = second.block_on(async {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(&mut read).poll(&mut cx)
    });
    let Poll::Ready((c, _)) = polled else {
        panic!("still pending: it would have hung");
    };
    assert_eq!(c.result, -libc::ECANCELED, "{c:?}");
}

/// The same, with the data there before the foreign poll: the read
/// completes on its own loop, and its bytes come back (nothing lost). An op
/// submitted on the first runtime and first polled on the second also
/// resolves.
#[test]
fn an_op_polled_on_another_runtime_keeps_what_it_read() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let (r, w) = common::pipe();
    let read = first.block_on(async { Some(submit_read(&r)) }).unwrap();
    common::write_fd(w.as_raw_fd(), b"hi").unwrap();
    let out = second.block_on(time::timeout(LIMIT, read));
    let (c, buf) = out.expect("the operation hung on the second runtime");
    assert_eq!(c.result, 2, "{c:?}");
    assert_eq!(&buf[..2], b"hi");
}

/// A stream read in flight on one runtime and awaited on another: it fails
/// at once with a clear error (the kind says to retry), having read
/// nothing, and the next read on the second runtime gets the data.
#[test]
fn a_stream_read_in_flight_polled_on_another_runtime_errs_and_the_next_read_works() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let (a, b) = first.block_on(async { UnixStream::pair().unwrap() });
    let mut read = Box::pin(a.read(Vec::with_capacity(16)));
    poll_once_on(&first, &mut read);
    let out = second.block_on(time::timeout(LIMIT, read));
    let (r, buf) = out.expect("the read hung on the second runtime");
    let e = r.expect_err("nothing was sent");
    assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "{e}");
    assert!(e.to_string().contains("another runtime"), "{e}");
    assert!(buf.is_empty());
    let (r, buf) = second.block_on(async {
        b.write_all(b"ping".to_vec()).await.0.unwrap();
        time::timeout(LIMIT, a.read(buf))
            .await
            .expect("the next read hung")
    });
    assert_eq!(r.unwrap(), 4);
    assert_eq!(&buf[..], b"ping");
}

/// A socket read dropped on one runtime (a timeout) leaves its receive in
/// that loop's kernel; a read on another runtime waits for it (so bytes
/// stay in order) and must not hang while the first runtime is idle.
#[test]
fn a_read_after_a_dropped_read_on_another_runtime_does_not_hang() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let (a, b) = first.block_on(async { UnixStream::pair().unwrap() });
    let timed_out = first.block_on(time::timeout(
        Duration::from_millis(20),
        a.read(Vec::with_capacity(16)),
    ));
    assert!(timed_out.is_err(), "nothing to read yet");
    second.block_on(async {
        let (r, _) = b.write_all(b"ping".to_vec()).await;
        r.unwrap();
    });
    let out = second.block_on(time::timeout(LIMIT, a.read(Vec::with_capacity(16))));
    let (r, buf) = out.expect("the read hung on the second runtime");
    assert_eq!(r.unwrap(), 4);
    assert_eq!(&buf[..], b"ping");
}

/// A task of an idle runtime awaited from another runtime's `block_on`
/// would never run: the handle gives a clear error at once, and the task
/// keeps its output for an await on its own runtime.
#[test]
fn a_join_handle_awaited_on_another_runtime_errs_and_keeps_the_output() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let mut handle = first.spawn(async { 7 });
    let out = second.block_on(time::timeout(LIMIT, &mut handle));
    let err = out
        .expect("the join handle hung on the second runtime")
        .expect_err("the task cannot have run");
    assert!(err.is_other_runtime(), "{err}");
    assert!(!err.is_cancelled() && !err.is_panic());
    assert!(err.to_string().contains("another runtime"), "{err}");
    // Nothing lost: its own runtime runs it and hands the output over.
    assert_eq!(first.block_on(handle).unwrap(), 7);
}

/// The same with the task's runtime blocked under the other one (its
/// `block_on` awaits the other's), which cannot run it either.
#[test]
fn a_join_handle_awaited_under_a_nested_runtime_errs() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let out = first.block_on(async {
        let handle = rt::spawn(async { 7 });
        second.block_on(time::timeout(LIMIT, handle))
    });
    let err = out
        .expect("the join handle hung on the nested runtime")
        .expect_err("the task cannot have run");
    assert!(err.is_other_runtime(), "{err}");
}

/// A join handle awaited by a task of the runtime that spawned it, inside a
/// nested `block_on` of that same runtime's task, still works as before.
#[test]
fn a_join_handle_on_its_own_runtime_still_resolves() {
    let rt = Runtime::new().unwrap();
    let out = rt.block_on(async {
        let h = rt::spawn(async { 6 * 7 });
        h.await
    });
    assert_eq!(out.unwrap(), 42);
}

/// A signal stream made on one runtime and awaited on another while the
/// first is idle: its watch moves to the second runtime's loop, keeping the
/// delivery the first loop had counted, and later deliveries reach it.
#[test]
fn a_signal_stream_polled_on_another_runtime_gets_the_signal() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let mut usr1 = first.block_on(async { ringloop::signal::signal(libc::SIGUSR1).unwrap() });
    let out = second.block_on(async {
        // SAFETY: plain syscall; the stream's handler is installed.
        unsafe { libc::raise(libc::SIGUSR1) };
        time::timeout(LIMIT, usr1.recv()).await
    });
    let count = out.expect("the signal stream hung on the second runtime");
    assert_eq!(count, Some(1));
    // It now watches on the second runtime's loop, and the first has no
    // watch left.
    assert!(!first.handle().has_events().unwrap());
    let out = second.block_on(async {
        // SAFETY: as above.
        unsafe { libc::raise(libc::SIGUSR1) };
        time::timeout(LIMIT, usr1.recv()).await
    });
    assert_eq!(out.expect("the moved stream hung"), Some(1));
}

/// A signal stream moved to a runtime whose loop watches the same signal
/// already: that loop counts the delivery itself, so the stream must not
/// also bring the one its first loop had counted (one raise, one item).
#[test]
fn a_signal_stream_moved_to_a_loop_watching_the_signal_counts_a_delivery_once() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let mut moved = first.block_on(async { ringloop::signal::signal(libc::SIGUSR2).unwrap() });
    let mut there = second.block_on(async { ringloop::signal::signal(libc::SIGUSR2).unwrap() });
    // SAFETY: plain syscall; both streams' handler is installed.
    unsafe { libc::raise(libc::SIGUSR2) };
    let got = second.block_on(time::timeout(LIMIT, moved.recv()));
    assert_eq!(got.expect("the moved stream hung"), Some(1));
    let got = second.block_on(time::timeout(LIMIT, there.recv()));
    assert_eq!(got.expect("the second runtime's own stream hung"), Some(1));
    let again = second.block_on(time::timeout(Duration::from_millis(300), moved.recv()));
    assert!(
        again.is_err(),
        "one raise, but the moved stream got a second item: {again:?}"
    );
}

/// An interval ticked on one runtime and then on another (the first idle)
/// ticks there: it is a `Sleep`, which moves its timer (checked: no fix
/// needed).
#[test]
fn an_interval_moved_to_another_runtime_ticks_there() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let mut every = first.block_on(async {
        let mut every = time::interval(Duration::from_millis(10));
        every.tick().await;
        every.tick().await;
        every
    });
    let out = second.block_on(time::timeout(LIMIT, async {
        every.tick().await;
        every.tick().await
    }));
    out.expect("the interval hung on the second runtime");
    assert!(!first.handle().has_events().unwrap());
}

/// A file read started on one runtime and awaited on another (the first
/// idle) completes there with its bytes: the kernel is given the read with
/// the cancel, and a page-cache read finishes before the cancel can stop
/// it, or fails with `Interrupted` having read nothing.
#[test]
fn a_file_read_moved_to_another_runtime_keeps_its_bytes() {
    let path = std::env::temp_dir().join(format!("ringloop-foreign-{}", std::process::id()));
    std::fs::write(&path, b"hello").unwrap();
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let file = first.block_on(async { ringloop::fs::File::open(&path).await.unwrap() });
    let mut read = Box::pin(file.read_at(Vec::with_capacity(16), 0));
    poll_once_on(&first, &mut read);
    let out = second.block_on(time::timeout(LIMIT, read));
    std::fs::remove_file(&path).unwrap();
    let (r, buf) = out.expect("the file read hung on the second runtime");
    match r {
        Ok(n) => assert_eq!(&buf[..n], b"hello"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "{e}"),
    }
}

/// SEMANTICS §1.1–1.2 for the kernel turn a foreign poll gives the idle
/// loop (to settle its operation there): what that turn reaps waits for the
/// loop's own iterations, so no handler of the idle loop runs inside
/// another runtime's poll, neither a completed operation's callback nor a
/// scheduled immediate. They run, one per iteration, when the loop does.
#[test]
fn settling_an_op_on_an_idle_loop_runs_none_of_its_handlers() {
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let (r, _w) = common::pipe();
    let mut read = first.block_on(async { Some(submit_read(&r)) }).unwrap();
    poll_once_on(&first, &mut read);
    let ran = common::log();
    let h = first.handle();
    let log = ran.clone();
    // SAFETY: a NOP points at no memory.
    unsafe {
        h.submit(opcode::Nop::new().build(), move |_, _| {
            log.borrow_mut().push("op")
        })
    }
    .unwrap();
    let log = ran.clone();
    h.add_immediate(move |_| log.borrow_mut().push("immediate"))
        .unwrap();
    let out = second.block_on(time::timeout(LIMIT, &mut read));
    let (c, _) = out.expect("the operation hung on the second runtime");
    assert_eq!(c.result, -libc::ECANCELED, "{c:?}");
    assert!(
        ran.borrow().is_empty(),
        "ran in the foreign poll: {:?}",
        ran.borrow()
    );
    for _ in 0..100 {
        if ran.borrow().len() == 2 {
            break;
        }
        h.run_once().unwrap();
    }
    assert_eq!(*ran.borrow(), ["immediate", "op"]);
}

/// Wakes the thread that parks in [`foreign_block_on`]: an executor that is
/// no ringloop runtime's, as `futures::executor::block_on` or `pollster`.
struct Unpark {
    thread: std::thread::Thread,
    woken: std::sync::atomic::AtomicBool,
}

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
        self.thread.unpark();
    }
}

/// A hand-written `block_on` with its own waker: polls `fut`, parks until
/// woken, polls again. Gives up after `limit` (`None`), so a future that
/// would hang such an executor for ever fails the test instead.
fn foreign_block_on<F: Future>(fut: F, limit: Duration) -> Option<F::Output> {
    let unpark = std::sync::Arc::new(Unpark {
        thread: std::thread::current(),
        woken: std::sync::atomic::AtomicBool::new(true),
    });
    let waker = std::task::Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let end = std::time::Instant::now() + limit;
    loop {
        if unpark
            .woken
            .swap(false, std::sync::atomic::Ordering::AcqRel)
            && let Poll::Ready(v) = fut.as_mut().poll(&mut cx)
        {
            return Some(v);
        }
        let now = std::time::Instant::now();
        if now >= end {
            return None;
        }
        std::thread::park_timeout(end - now);
    }
}

/// Polls the inner future with a waker of its own that forwards to the
/// task's, as `FuturesUnordered` or a `select` over many futures does: the
/// future sees a waker that is no runtime task's.
struct Wrapped<F>(F);

struct Forward(std::task::Waker);

impl std::task::Wake for Forward {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.wake_by_ref();
    }
}

impl<F: Future + Unpin> Future for Wrapped<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let waker = std::task::Waker::from(std::sync::Arc::new(Forward(cx.waker().clone())));
        Pin::new(&mut self.0).poll(&mut Context::from_waker(&waker))
    }
}

/// A join handle awaited by another executor (its own waker, no runtime
/// running) while the task's runtime is the newest idle one: nothing runs
/// the task while that executor waits, so the handle gives the
/// other-runtime error at once instead of hanging, and keeps the output
/// for an await on its own runtime.
#[test]
fn a_join_handle_awaited_by_another_executor_errs_and_keeps_the_output() {
    let rt = Runtime::new().unwrap();
    let mut handle = rt.spawn(async { 7 });
    let out = foreign_block_on(&mut handle, LIMIT);
    let err = out
        .expect("the join handle hung in another executor")
        .expect_err("the task cannot have run");
    assert!(err.is_other_runtime(), "{err}");
    assert!(err.to_string().contains("another runtime"), "{err}");
    assert_eq!(rt.block_on(handle).unwrap(), 7);
}

/// The runtime's own tasks (and `block_on`'s future) that poll a join
/// handle through a waker of their own (a combinator's) while the runtime
/// runs: not taken for another executor, they get the output.
#[test]
fn a_join_handle_polled_through_a_wrapped_waker_on_its_own_runtime_resolves() {
    let rt = Runtime::new().unwrap();
    let out = rt.block_on(async {
        let slow = rt::spawn(async {
            rt::yield_now().await;
            time::sleep(Duration::from_millis(5)).await;
            6
        });
        let inner = rt::spawn(Wrapped(slow));
        let outer = Wrapped(rt::spawn(async { 7 })).await;
        (time::timeout(LIMIT, inner).await, outer)
    });
    let (inner, outer) = out;
    let inner = inner.expect("the wrapped handle hung in its own task");
    assert_eq!(inner.unwrap().unwrap(), 6);
    assert_eq!(outer.unwrap(), 7);
}

/// A signal stream polled by another executor (its own waker, no runtime
/// running) while its runtime is idle, also with a newer idle runtime on
/// the thread (the stream must not move to a loop nothing runs): its loop
/// would never dispatch a delivery while that executor waits, so the poll
/// panics with a message that says so, instead of hanging.
#[test]
fn a_signal_stream_polled_by_another_executor_panics_instead_of_hanging() {
    // A signal no other test of this binary raises: `cargo test` runs them
    // on threads of one process, and every watch of a signal counts it.
    for newer_runtime in [false, true] {
        let rt = Runtime::new().unwrap();
        let mut winch = rt.block_on(async { ringloop::signal::signal(libc::SIGWINCH).unwrap() });
        let newer = newer_runtime.then(|| Runtime::new().unwrap());
        let msg = foreign_panic("the signal stream", winch.recv());
        assert!(msg.contains("another executor"), "{msg}");
        drop(newer);
        // Still usable on its own runtime.
        let got = rt.block_on(async {
            // SAFETY: plain syscall; the stream's handler is installed.
            unsafe { libc::raise(libc::SIGWINCH) };
            time::timeout(LIMIT, winch.recv()).await
        });
        assert_eq!(got.expect("the stream hung on its own runtime"), Some(1));
    }
}

/// A signal stream read through a waker of the runtime's own task's
/// combinator, while the runtime runs: neither moved nor refused, it gets
/// the delivery.
#[test]
fn a_signal_stream_polled_through_a_wrapped_waker_on_its_own_runtime_gets_the_signal() {
    // A signal of its own, as above.
    let rt = Runtime::new().unwrap();
    let got = rt.block_on(async {
        let mut urg = ringloop::signal::signal(libc::SIGURG).unwrap();
        let task = rt::spawn(async move {
            let recv = Box::pin(urg.recv());
            Wrapped(recv).await
        });
        rt::yield_now().await;
        // SAFETY: plain syscall; the stream's handler is installed.
        unsafe { libc::raise(libc::SIGURG) };
        time::timeout(LIMIT, task).await
    });
    let got = got.expect("the wrapped signal stream hung in its own task");
    assert_eq!(got.unwrap(), Some(1));
}

/// A loopback listener whose accept queue is full (backlog 0, and one
/// connection in it, not accepted), that connection, and the address: the
/// SYN of a further connect is dropped, so that connect stays in progress
/// in the kernel (`SYN_SENT`) until the queue has room and its SYN is sent
/// again (about 1 s later).
fn full_listener() -> (
    std::net::TcpListener,
    std::net::TcpStream,
    std::net::SocketAddr,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: plain syscall on a listening socket: it only sets the backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let addr = listener.local_addr().unwrap();
    let queued = std::net::TcpStream::connect(addr).unwrap();
    (listener, queued, addr)
}

/// The kernel side of the next test, with raw operations: a connect
/// cancelled while its handshake is in progress (its future awaited by
/// another runtime's task, the first runtime idle) leaves the handshake
/// going, and a plain `IORING_OP_CONNECT` on the same socket then fails
/// with `EALREADY`: the case `TcpStream::connect` has to handle itself.
#[test]
fn a_connect_cancelled_in_progress_leaves_ealready_for_a_raw_retry() {
    let (_listener, _queued, addr) = full_listener();
    let std::net::SocketAddr::V4(v4) = addr else {
        unreachable!("bound to 127.0.0.1")
    };
    let sa = Box::new(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    });
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd owned by nobody else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let connect = |sa: Box<libc::sockaddr_in>| {
        let entry = opcode::Connect::new(
            types::Fd(sock.as_raw_fd()),
            (&*sa as *const libc::sockaddr_in).cast(),
            len,
        )
        .build();
        // SAFETY: the boxed address is moved into the operation; the fd
        // outlives it (the test waits for every operation).
        unsafe { op::submit(entry, sa) }
    };
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let mut conn = first.block_on(async { Some(connect(sa)) }).unwrap();
    poll_once_on(&first, &mut conn);
    // The SYN goes out (and is dropped): the handshake is in progress.
    first.handle().flush().unwrap();
    let (c, sa) = second
        .block_on(time::timeout(LIMIT, &mut conn))
        .expect("the connect hung on the second runtime");
    assert_eq!(c.result, -libc::ECANCELED, "{c:?}");
    let (c, _) = second.block_on(async { time::timeout(LIMIT, connect(sa)).await.unwrap() });
    assert_eq!(c.result, -libc::EALREADY, "{c:?}");
}

/// A `TcpStream::connect` in flight on one runtime (its handshake in
/// progress) and awaited on another, the first idle: its connect is
/// cancelled there, and it connects on the second runtime, on the same
/// socket, once the handshake completes, instead of failing (or, retried
/// naively, failing with `EALREADY`). The connection works.
#[test]
fn a_tcp_connect_moved_to_another_runtime_connects_there() {
    let (listener, queued, addr) = full_listener();
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let mut conn = Box::pin(ringloop::net::TcpStream::connect(addr));
    poll_once_on(&first, &mut conn);
    // The SYN goes out (and is dropped): the handshake is in progress.
    first.handle().flush().unwrap();
    // Room in the accept queue: the SYN sent again gets through.
    let (queued_there, _) = listener.accept().unwrap();
    drop((queued, queued_there));
    let stream = second
        .block_on(time::timeout(LIMIT, conn))
        .expect("the connect hung on the second runtime")
        .expect("the moved connect failed");
    assert_eq!(stream.peer_addr().unwrap(), addr);
    let (mut server, _) = listener.accept().unwrap();
    second.block_on(async { stream.write_all(b"ping".to_vec()).await.0.unwrap() });
    let mut got = [0u8; 4];
    std::io::Read::read_exact(&mut server, &mut got).unwrap();
    assert_eq!(&got, b"ping");
}

/// The same with a handshake that then fails (the listener closes before
/// the SYN is sent again, which the port refuses): the moved connect gives
/// the error the handshake ended with, not `EALREADY` or `Interrupted`.
#[test]
fn a_tcp_connect_moved_to_another_runtime_reports_how_its_handshake_ended() {
    let (listener, queued, addr) = full_listener();
    let first = Runtime::new().unwrap();
    let second = Runtime::new().unwrap();
    let mut conn = Box::pin(ringloop::net::TcpStream::connect(addr));
    poll_once_on(&first, &mut conn);
    first.handle().flush().unwrap();
    drop((listener, queued));
    let err = second
        .block_on(time::timeout(LIMIT, conn))
        .expect("the connect hung on the second runtime")
        .expect_err("nothing listens any more");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

/// Runs `fut` in [`foreign_block_on`] and returns the message it panics
/// with; fails the test if it hangs or resolves instead.
fn foreign_panic<F: Future>(what: &str, fut: F) -> String {
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        foreign_block_on(fut, LIMIT)
    }));
    let panic = match out {
        Ok(None) => panic!("{what} hung in another executor"),
        Ok(Some(_)) => panic!("{what} resolved in another executor, with nothing to run it"),
        Err(p) => p,
    };
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A sleep polled by another executor (its own waker, no runtime running)
/// while its runtime is the newest idle one, also with a newer idle
/// runtime on the thread (it must not move its timer to a loop nothing
/// runs): nothing would fire its timer while that executor waits, so the
/// poll panics with a message that says so, instead of hanging. The same
/// for a sleep first polled there (its timer would go on the idle
/// runtime's loop), a `timeout` and an `interval`. The sleep still works
/// on its own runtime afterwards.
#[test]
fn a_sleep_polled_by_another_executor_panics_instead_of_hanging() {
    for newer_runtime in [false, true] {
        let rt = Runtime::new().unwrap();
        let mut sleep = Box::pin(time::sleep(Duration::from_millis(20)));
        poll_once_on(&rt, &mut sleep);
        let newer = newer_runtime.then(|| Runtime::new().unwrap());
        let msg = foreign_panic("an armed sleep", &mut sleep);
        assert!(msg.contains("another executor"), "{msg}");
        assert!(msg.contains("block_on"), "{msg}");
        let msg = foreign_panic("a new sleep", time::sleep(Duration::from_millis(20)));
        assert!(msg.contains("another executor"), "{msg}");
        let msg = foreign_panic(
            "a timeout",
            time::timeout(Duration::from_millis(20), std::future::pending::<()>()),
        );
        assert!(msg.contains("another executor"), "{msg}");
        let mut every = rt.block_on(async { time::interval(Duration::from_millis(20)) });
        let msg = foreign_panic("an interval", every.tick());
        assert!(msg.contains("another executor"), "{msg}");
        drop(newer);
        rt.block_on(time::timeout(LIMIT, &mut sleep))
            .expect("the sleep hung on its own runtime");
        rt.block_on(time::timeout(LIMIT, every.tick()))
            .expect("the interval hung on its own runtime");
        assert!(!rt.handle().has_events().unwrap());
    }
}

/// A sleep that fired while its runtime ran, then polled by another
/// executor: it is done, so it says so rather than panicking.
#[test]
fn a_fired_sleep_polled_by_another_executor_is_ready() {
    let rt = Runtime::new().unwrap();
    let mut sleep = Box::pin(time::sleep(Duration::from_millis(1)));
    poll_once_on(&rt, &mut sleep);
    rt.block_on(time::sleep(Duration::from_millis(10)));
    foreign_block_on(&mut sleep, LIMIT).expect("a fired sleep hung in another executor");
}

/// A sleep polled through a combinator's waker inside its own runtime's
/// `block_on` and tasks, while that runtime runs: not taken for another
/// executor, it fires.
#[test]
fn a_sleep_polled_through_a_wrapped_waker_on_its_own_runtime_fires() {
    let rt = Runtime::new().unwrap();
    let out = rt.block_on(async {
        let task = rt::spawn(async {
            Wrapped(Box::pin(time::sleep(Duration::from_millis(5)))).await;
            6
        });
        let here = time::timeout(
            LIMIT,
            Wrapped(Box::pin(time::sleep(Duration::from_millis(5)))),
        )
        .await;
        (here, time::timeout(LIMIT, task).await)
    });
    out.0.expect("the wrapped sleep hung in block_on");
    let task = out.1.expect("the wrapped sleep hung in its task");
    assert_eq!(task.unwrap(), 6);
}

/// An operation in flight (a pipe read with no data) polled by another
/// executor while its runtime is idle, also with a newer idle runtime, or
/// submitted and first polled there: nothing would reap it while that
/// executor waits, so it is cancelled on its own loop and resolves at once
/// with `-ECANCELED` and its buffer, instead of hanging. Its loop has
/// nothing of it left.
#[test]
fn an_op_polled_by_another_executor_is_cancelled_instead_of_hanging() {
    for newer_runtime in [false, true] {
        let rt = Runtime::new().unwrap();
        let (r, _w) = common::pipe();
        rt.block_on(async {});
        let idle = rt.handle().stats().unwrap().in_flight;
        let mut read = rt.block_on(async { Some(submit_read(&r)) }).unwrap();
        poll_once_on(&rt, &mut read);
        let newer = newer_runtime.then(|| Runtime::new().unwrap());
        let (c, buf) =
            foreign_block_on(&mut read, LIMIT).expect("the operation hung in another executor");
        assert_eq!(c.result, -libc::ECANCELED, "{c:?}");
        assert_eq!(buf.len(), 16);
        drop(newer);
        let (c, _) = foreign_block_on(submit_read(&r), LIMIT)
            .expect("a new operation hung in another executor");
        assert_eq!(c.result, -libc::ECANCELED, "{c:?}");
        assert!(!rt.handle().has_events().unwrap());
        assert_eq!(rt.handle().stats().unwrap().in_flight, idle);
    }
}

/// The same with the data there before the foreign poll: the read
/// completed in the kernel, and its bytes come back (nothing lost).
#[test]
fn an_op_polled_by_another_executor_keeps_what_it_read() {
    let rt = Runtime::new().unwrap();
    let (r, w) = common::pipe();
    let mut read = rt.block_on(async { Some(submit_read(&r)) }).unwrap();
    poll_once_on(&rt, &mut read);
    common::write_fd(w.as_raw_fd(), b"hi").unwrap();
    let (c, buf) =
        foreign_block_on(&mut read, LIMIT).expect("the operation hung in another executor");
    assert_eq!(c.result, 2, "{c:?}");
    assert_eq!(&buf[..2], b"hi");
}

/// A stream read with nothing to read, awaited by another executor while
/// its runtime is idle: it fails at once with an error that says no
/// runtime runs the wait (not `Interrupted`, which would invite a retry in
/// place), having read nothing; the stream then reads on its own runtime.
/// The same for a read after one that was dropped on the runtime (its
/// receive still in that loop's kernel), which waited for it before.
#[test]
fn a_stream_read_awaited_by_another_executor_errs_instead_of_hanging() {
    let rt = Runtime::new().unwrap();
    let (a, b) = rt.block_on(async { UnixStream::pair().unwrap() });
    let (r, buf) = foreign_block_on(a.read(Vec::with_capacity(16)), LIMIT)
        .expect("the read hung in another executor");
    let e = r.expect_err("nothing was sent");
    assert_ne!(e.kind(), std::io::ErrorKind::Interrupted, "{e}");
    assert!(e.to_string().contains("no ringloop runtime runs"), "{e}");
    assert!(e.to_string().contains("block_on"), "{e}");
    assert!(buf.is_empty());
    let timed_out = rt.block_on(time::timeout(
        Duration::from_millis(20),
        a.read(Vec::with_capacity(16)),
    ));
    assert!(timed_out.is_err(), "nothing to read yet");
    let (r, _) = foreign_block_on(a.read(Vec::with_capacity(16)), LIMIT)
        .expect("the read after a dropped one hung in another executor");
    let e = r.expect_err("nothing was sent");
    assert!(e.to_string().contains("no ringloop runtime runs"), "{e}");
    let (r, buf) = rt.block_on(async {
        b.write_all(b"ping".to_vec()).await.0.unwrap();
        time::timeout(LIMIT, a.read(Vec::with_capacity(16)))
            .await
            .expect("the next read hung")
    });
    assert_eq!(r.unwrap(), 4);
    assert_eq!(&buf[..], b"ping");
}

/// An operation polled through a combinator's waker inside its own
/// runtime's `block_on` and tasks, while that runtime runs: not taken for
/// another executor, it completes with the bytes written later.
#[test]
fn an_op_polled_through_a_wrapped_waker_on_its_own_runtime_completes() {
    let rt = Runtime::new().unwrap();
    let (r, w) = common::pipe();
    let (r2, w2) = common::pipe();
    let out = rt.block_on(async {
        let task = rt::spawn(async move {
            let (c, buf) = Wrapped(submit_read(&r2)).await;
            (c.result, buf)
        });
        let writer = rt::spawn(async move {
            time::sleep(Duration::from_millis(5)).await;
            common::write_fd(w.as_raw_fd(), b"hi").unwrap();
            common::write_fd(w2.as_raw_fd(), b"yo").unwrap();
        });
        let here = time::timeout(LIMIT, Wrapped(submit_read(&r))).await;
        writer.await.unwrap();
        (here, time::timeout(LIMIT, task).await)
    });
    let (c, buf) = out.0.expect("the wrapped op hung in block_on");
    assert_eq!(c.result, 2, "{c:?}");
    assert_eq!(&buf[..2], b"hi");
    let (res, buf) = out.1.expect("the wrapped op hung in its task").unwrap();
    assert_eq!(res, 2);
    assert_eq!(&buf[..2], b"yo");
}

/// An `AsyncFd` readiness wait by another executor while its runtime is
/// idle: readiness reaches only its loop, which nothing runs meanwhile, so
/// the wait fails at once saying so, instead of hanging; the fd then waits
/// on its own runtime. Readiness already seen is still given.
#[test]
fn an_asyncfd_wait_by_another_executor_errs_instead_of_hanging() {
    let rt = Runtime::new().unwrap();
    let (a, b) = common::unix_stream_pair();
    let fd = rt.block_on(async { ringloop::io::AsyncFd::new(a).unwrap() });
    let r = foreign_block_on(fd.readable(), LIMIT).expect("the wait hung in another executor");
    let e = r.map(|_| ()).expect_err("nothing was sent");
    assert!(e.to_string().contains("no ringloop runtime runs"), "{e}");
    assert!(e.to_string().contains("block_on"), "{e}");
    let r = foreign_block_on(std::future::poll_fn(|cx| fd.poll_read_ready(cx)), LIMIT)
        .expect("the poll hung in another executor");
    assert!(r.is_err());
    std::io::Write::write_all(&mut &b, b"x").unwrap();
    rt.block_on(async {
        time::timeout(LIMIT, fd.readable())
            .await
            .expect("the wait hung on its own runtime")
            .unwrap()
            .retain_ready();
    });
    let ready = foreign_block_on(fd.readable(), LIMIT).expect("the wait hung in another executor");
    assert!(ready.is_ok(), "readiness already seen is given");
}

/// An `AsyncFd` wait through a combinator's waker inside its own runtime's
/// `block_on`, while that runtime runs: not taken for another executor, it
/// is woken by the readiness that comes later.
#[test]
fn an_asyncfd_wait_through_a_wrapped_waker_on_its_own_runtime_is_woken() {
    let rt = Runtime::new().unwrap();
    let (a, b) = common::unix_stream_pair();
    let got = rt.block_on(async {
        let fd = ringloop::io::AsyncFd::new(a).unwrap();
        let writer = rt::spawn(async move {
            time::sleep(Duration::from_millis(5)).await;
            std::io::Write::write_all(&mut &b, b"x").unwrap();
            b
        });
        let ready = time::timeout(LIMIT, Wrapped(Box::pin(fd.readable())))
            .await
            .map(|r| r.map(|_| ()));
        let _b = writer.await.unwrap();
        ready
    });
    got.expect("the wrapped wait hung in its own runtime")
        .expect("the fd became readable");
}

/// A stream's multishot receive read by another executor while its runtime
/// is idle: its completions come to that loop only, so the read fails at
/// once saying no runtime runs it, instead of hanging; the stream then
/// reads on its own runtime, losing nothing.
#[test]
fn a_multishot_read_by_another_executor_errs_instead_of_hanging() {
    let rt = Runtime::new().unwrap();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let a = rt.block_on(async {
        let a = UnixStream::from_std(a);
        a.enable_multishot_recv().unwrap();
        a
    });
    let (r, buf) = foreign_block_on(a.read(Vec::with_capacity(16)), LIMIT)
        .expect("the multishot read hung in another executor");
    let e = r.expect_err("nothing was sent");
    assert!(e.to_string().contains("no ringloop runtime runs"), "{e}");
    assert!(buf.is_empty());
    std::io::Write::write_all(&mut &b, b"ping").unwrap();
    let (r, buf) = rt
        .block_on(time::timeout(LIMIT, a.read(Vec::with_capacity(16))))
        .expect("the multishot read hung on its own runtime");
    assert_eq!(r.unwrap(), 4);
    assert_eq!(&buf[..], b"ping");
}

/// A multishot read through a combinator's waker inside its own runtime's
/// `block_on`, while that runtime runs: not taken for another executor, it
/// gets the data that comes later.
#[test]
fn a_multishot_read_through_a_wrapped_waker_on_its_own_runtime_gets_the_data() {
    let rt = Runtime::new().unwrap();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (r, buf) = rt.block_on(async {
        let a = UnixStream::from_std(a);
        a.enable_multishot_recv().unwrap();
        let writer = rt::spawn(async move {
            time::sleep(Duration::from_millis(5)).await;
            std::io::Write::write_all(&mut &b, b"ping").unwrap();
            b
        });
        let out = time::timeout(LIMIT, Wrapped(Box::pin(a.read(Vec::with_capacity(16)))))
            .await
            .expect("the wrapped multishot read hung on its own runtime");
        let _b = writer.await.unwrap();
        out
    });
    assert_eq!(r.unwrap(), 4);
    assert_eq!(&buf[..], b"ping");
}
