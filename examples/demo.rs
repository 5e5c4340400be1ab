//! A tour of ringloop in a few seconds: it prints what happens as it goes.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! Each section uses one kind of event and runs the loop until that
//! section's events are done ([`Handle::run`] returns when nothing is left):
//! fd watches on a socket pair (level-triggered), "close means closed",
//! timers, immediates, an immediate scheduled from another thread, a signal,
//! a generic io_uring operation, the async API (tasks, TCP sockets, sleep
//! and timeout on the same loop), and the loop's statistics and trace hook.

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use ringloop::net::{TcpListener, TcpStream};
use ringloop::{EventKind, EventLoop, Handle, Interest, TracePoint, rt, time};

fn main() {
    if let Err(e) = run() {
        // ringloop's errors say what to do, for example when io_uring is
        // disabled in a container.
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
}

/// Prints a line stamped with the time since the demo started.
macro_rules! say {
    ($start:expr, $($arg:tt)*) => {
        println!("[{:8.3} ms] {}", $start.elapsed().as_secs_f64() * 1e3, format!($($arg)*))
    };
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let lp = EventLoop::new()?;
    let f = lp.features()?;
    println!(
        "ringloop on Linux {}: SINGLE_ISSUER={} DEFER_TASKRUN={} registered ring={} ({} SQ / {} CQ entries)",
        f.kernel, f.single_issuer, f.defer_taskrun, f.registered_ring, f.sq_entries, f.cq_entries
    );

    // Count what the trace hook sees, to print at the end.
    let traced = Rc::new(RefCell::new(Trace::default()));
    let t = traced.clone();
    lp.set_trace_hook(Some(Box::new(move |point| t.borrow_mut().count(point))));

    fd_watches(&lp, start)?;
    close_means_closed(&lp, start)?;
    timers(&lp, start)?;
    immediates(&lp, start)?;
    cross_thread(&lp, start)?;
    signal(&lp, start)?;
    generic_op(&lp, start)?;
    // The runtime takes the loop over; its handle still reaches the loop.
    let runtime = async_api(lp, start)?;
    let lp = runtime.handle();

    section("statistics");
    let s = lp.stats()?;
    println!(
        "iterations={} waits={} io_uring_enter calls={} handlers run={} completions={} in flight={} overflow flushes={}",
        s.iterations, s.waits, s.enters, s.handlers, s.completions, s.in_flight, s.overflow_flushes
    );
    println!("(the operation in flight is the poll that lets other threads wake the loop)");
    let t = traced.borrow();
    println!(
        "trace hook: {} waits, {} fd handlers, {} timer handlers, {} immediates, {} attached, {} detached",
        t.waits, t.fd, t.timer, t.immediate, t.attach, t.detach
    );
    println!("\ndone in {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    Ok(())
}

#[derive(Default)]
struct Trace {
    waits: u32,
    fd: u32,
    timer: u32,
    immediate: u32,
    attach: u32,
    detach: u32,
}

impl Trace {
    fn count(&mut self, point: TracePoint) {
        match point {
            TracePoint::BeforeWait => self.waits += 1,
            TracePoint::BeforeHandler(EventKind::Fd) => self.fd += 1,
            TracePoint::BeforeHandler(EventKind::Timer) => self.timer += 1,
            TracePoint::BeforeHandler(EventKind::Immediate) => self.immediate += 1,
            TracePoint::Attach(_) => self.attach += 1,
            TracePoint::Detach(_) => self.detach += 1,
            _ => {}
        }
    }
}

/// Level-triggered READ and WRITE watches on a socket pair.
fn fd_watches(lp: &Handle, start: Instant) -> Result<(), Box<dyn std::error::Error>> {
    section("fd watches (level-triggered, like epoll without EPOLLET)");
    let (ours, mut peer) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let mut reader = ours.try_clone()?;
    peer.write_all(b"ping pong")?;
    say!(
        start,
        "peer wrote \"ping pong\"; the handler reads 4 bytes per call"
    );
    lp.add_fd(ours.into(), Interest::READ, move |lp, ev| {
        let mut buf = [0u8; 4];
        match reader.read(&mut buf) {
            Ok(0) => {
                say!(
                    start,
                    "handler called with READ: read gave EOF; removing the watch"
                );
                lp.remove_fd(ev.id).unwrap();
            }
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                say!(
                    start,
                    "handler called with {:?}: read {text:?} (more may be waiting: level-triggered)",
                    ev.ready
                );
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    })?;
    // Let the handler drain what is there, then hang up.
    let mut peer = Some(peer);
    lp.add_timer(Duration::from_millis(20), move |_| {
        say!(start, "peer hangs up");
        drop(peer.take());
    })?;

    // A WRITE watch: a fresh socket is writable at once.
    let (w, _keep) = UnixStream::pair()?;
    lp.add_fd(w.into(), Interest::WRITE, move |lp, ev| {
        say!(
            start,
            "handler called with {:?}: writable; setting the interest to NONE",
            ev.ready
        );
        lp.set_interest(ev.id, Interest::NONE).unwrap();
        say!(
            start,
            "a watch with no interest stays registered but does not keep run() going"
        );
    })?;
    lp.run()?;
    Ok(())
}

/// Removing a watch that owns its fd closes it: the peer sees EOF at once.
fn close_means_closed(lp: &Handle, start: Instant) -> Result<(), Box<dyn std::error::Error>> {
    section("close means closed");
    let (ours, mut peer) = UnixStream::pair()?;
    peer.set_nonblocking(true)?;
    let id = lp.add_fd(ours.into(), Interest::READ, |_, _| {})?;
    // Let the loop arm the poll: it now holds a reference to the socket.
    lp.set_wait_timeout(ringloop::WaitTimeout::Never)?;
    let _ = lp.run_once();
    lp.set_wait_timeout(ringloop::WaitTimeout::After(Duration::from_secs(30)))?;
    say!(
        start,
        "the kernel has a poll pending on our end of a socket pair"
    );
    let before = Instant::now();
    lp.remove_fd(id)?;
    let mut buf = [0u8; 1];
    match peer.read(&mut buf) {
        Ok(0) => say!(
            start,
            "remove_fd returned and the peer already reads EOF ({:?} later)",
            before.elapsed()
        ),
        other => say!(start, "unexpected: the peer's read gave {other:?}"),
    }
    say!(
        start,
        "(a plain close(2) would leave the socket open while the poll holds it)"
    );
    Ok(())
}

/// One-shot timers on the monotonic clock: deadline order, cancel, lateness.
fn timers(lp: &Handle, start: Instant) -> Result<(), Box<dyn std::error::Error>> {
    section("timers");
    for ms in [30u64, 10, 20] {
        let due = Instant::now() + Duration::from_millis(ms);
        lp.add_timer(Duration::from_millis(ms), move |_| {
            say!(
                start,
                "{ms} ms timer fired, {:?} after its deadline",
                due.elapsed()
            );
        })?;
    }
    let doomed = lp.add_timer(Duration::from_millis(15), |_| unreachable!("cancelled"))?;
    lp.cancel_timer(doomed)?;
    say!(
        start,
        "added timers for 30, 10 and 20 ms, and cancelled one for 15 ms"
    );
    lp.run()?;
    Ok(())
}

/// Immediates run before timers and fds, in the order scheduled.
fn immediates(lp: &Handle, start: Instant) -> Result<(), Box<dyn std::error::Error>> {
    section("immediates");
    lp.add_timer_asap(move |_| say!(start, "the as-soon-as-possible timer runs after them"))?;
    for i in 1..=3 {
        lp.add_immediate(move |lp| {
            say!(start, "immediate {i}");
            if i == 3 {
                lp.add_immediate(move |_| say!(start, "immediate scheduled by immediate 3"))
                    .unwrap();
            }
        })?;
    }
    lp.run()?;
    Ok(())
}

/// Another thread schedules work; the loop, blocked in io_uring_enter, wakes.
fn cross_thread(lp: &Handle, start: Instant) -> Result<(), Box<dyn std::error::Error>> {
    section("an immediate from another thread");
    let remote = lp.remote()?;
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        say!(start, "worker thread: scheduling a closure on the loop");
        remote
            .schedule(move |_| {
                say!(
                    start,
                    "on the loop's thread: {:?}",
                    std::thread::current().name()
                )
            })
            .unwrap();
    });
    // No other event is registered, so run() would return at once: wait for
    // the worker explicitly by running iterations until its closure ran.
    let ran_before = lp.stats()?.handlers;
    say!(
        start,
        "loop blocks in io_uring_enter until the worker wakes it"
    );
    while lp.stats()?.handlers == ran_before {
        lp.run_once()?;
    }
    thread.join().map_err(|_| "worker panicked")?;
    Ok(())
}

/// A signal is counted by the loop's handler and wakes the ring through an eventfd.
fn signal(lp: &Handle, start: Instant) -> Result<(), Box<dyn std::error::Error>> {
    section("signals");
    let seen = Rc::new(Cell::new(false));
    let s = seen.clone();
    lp.add_signal(libc::SIGUSR1, move |lp, ev| {
        say!(
            start,
            "SIGUSR1 handled on the loop (delivered {} time(s))",
            ev.count
        );
        s.set(true);
        lp.remove_signal(ev.id).unwrap();
    })?;
    // SAFETY: sending a signal to ourselves; the loop blocked SIGUSR1 on this
    // (the only) thread when the watch was added, so it is queued, not fatal.
    unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
    say!(start, "sent SIGUSR1 to ourselves");
    lp.run()?;
    assert!(seen.get());
    Ok(())
}

/// Any io_uring operation can be submitted; here a read at an offset.
fn generic_op(lp: &Handle, start: Instant) -> Result<(), Box<dyn std::error::Error>> {
    section("a generic io_uring operation");
    let file = std::fs::File::open("/proc/self/stat")?;
    let mut buf = vec![0u8; 64];
    let entry = opcode::Read::new(
        types::Fd(std::os::fd::AsRawFd::as_raw_fd(&file)),
        buf.as_mut_ptr(),
        buf.len() as u32,
    )
    .offset(0)
    .build();
    // SAFETY: the buffer and the file are moved into the callback, so they
    // live until the kernel is done with the read.
    unsafe {
        lp.submit(entry, move |_, completion| {
            let _keep = &file;
            match completion.result() {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n as usize]);
                    let pid = text.split_whitespace().next().unwrap_or("?");
                    say!(
                        start,
                        "IORING_OP_READ of /proc/self/stat: {n} bytes, our pid is {pid}"
                    );
                }
                Err(e) => say!(start, "the read failed: {e}"),
            }
        })?;
    }
    lp.run()?;
    Ok(())
}

/// The futures API on the same loop: a runtime, two tasks talking over TCP,
/// a sleep and a timeout.
fn async_api(lp: EventLoop, start: Instant) -> Result<rt::Runtime, Box<dyn std::error::Error>> {
    section("the async API: tasks, sockets and timers on the same loop");
    let runtime = rt::Runtime::with_loop(lp)?;
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        say!(start, "listening on {addr}; spawning a server task");
        let server = rt::spawn(async move {
            let (stream, peer) = listener.accept().await?;
            say!(start, "server task: accepted {peer}");
            let (n, buf) = stream.read(Vec::with_capacity(64)).await;
            let n = n?;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            say!(start, "server task: read {text:?}, writing it back");
            stream.write_all(buf).await.0?;
            std::io::Result::Ok(())
        });
        let client = TcpStream::connect(addr).await?;
        say!(start, "main task: connected, sending \"hello, ring\"");
        client.write_all(b"hello, ring".to_vec()).await.0?;
        let (n, buf) = client.read(Vec::with_capacity(64)).await;
        let text = String::from_utf8_lossy(&buf[..n?]).into_owned();
        say!(start, "main task: got back {text:?}");
        server.await.map_err(|e| format!("server task: {e}"))??;

        let before = Instant::now();
        time::sleep(Duration::from_millis(10)).await;
        say!(start, "slept 10 ms: {:?} passed", before.elapsed());
        let slow = time::sleep(Duration::from_secs(60));
        match time::timeout(Duration::from_millis(10), slow).await {
            Err(elapsed) => say!(start, "a 60 s sleep under a 10 ms timeout: {elapsed}"),
            Ok(()) => say!(start, "unexpected: the 60 s sleep finished"),
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(runtime)
}
