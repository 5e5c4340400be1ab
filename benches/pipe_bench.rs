//! The libevent dispatch benchmark (Niels Provos's `bench.c`), for ringloop
//! and its baselines.
//!
//! N AF_UNIX socket pairs each have a READ watch. A round writes one byte into
//! A evenly spaced pairs ("active chains"); each READ handler reads its byte
//! and, while writes remain, writes one byte to the next pair. The round ends
//! when every byte written has been read (A + W events). One untimed warm-up
//! round, then R timed rounds; the median is reported.
//!
//! ```text
//! cargo run --release --example pipe_bench -- VARIANT -n N -a A -w W -r R
//! ```
//!
//! VARIANT is `ringloop` (callback API), `ringloop-async` (futures API),
//! `epoll` (a plain level-triggered epoll loop, the reference) or `tokio`
//! (current-thread runtime with `AsyncFd`). Two more pair up edge-triggered
//! loops: `ringloop-edge` (`Interest::READ | Interest::EDGE`, one multishot
//! poll per fd) and `epoll-edge` (`EPOLLET`). Their handlers drain the fd
//! (a short read means it is empty), as edge triggering requires; each byte
//! read still counts as one event. The readiness-based async variants
//! (`ringloop-async`, `tokio`) read up to 64 bytes and clear readiness after
//! a short read, as tokio's own `TcpStream` does, rather than reading again
//! to hear EAGAIN.
//!
//! Two more show ring-native I/O, where the transfers themselves are
//! io_uring operations and ride on the loop's one `io_uring_enter` per
//! iteration instead of costing a `read` and a `write` each:
//! `ringloop-ops` (callback API: one `RECV` per pair in flight, the token
//! passed on with a `SEND`), `ringloop-async-ops` (futures API:
//! `ringloop::net::UnixStream` reads and writes) and `ringloop-async-multi`
//! (the same with `enable_multishot_recv`: one multishot receive per pair).
//!
//! Three more are floors, not libraries: `uring-raw` (a minimal
//! level-triggered loop on the `io-uring` crate alone, one-shot `POLL_ADD`
//! re-armed after each read), `uring-raw-fixed` (the same with the fds
//! registered as fixed files) and `uring-raw-edge` (one multishot poll per
//! fd). They show what the kernel charges for polling through the ring, apart
//! from what ringloop adds.
//!
//! Prints exactly one line on stdout; syscall counters (where the variant
//! has them) go to stderr.

mod common;

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{flag, median, raise_nofile};

struct Params {
    pipes: usize,
    active: usize,
    writes: usize,
    rounds: usize,
}

/// Makes `n` non-blocking socket pairs: (read end, write end).
fn pairs(n: usize) -> io::Result<Vec<(OwnedFd, OwnedFd)>> {
    (0..n)
        .map(|_| {
            let (r, w) = UnixStream::pair()?;
            r.set_nonblocking(true)?;
            w.set_nonblocking(true)?;
            Ok((r.into(), w.into()))
        })
        .collect()
}

fn read1(fd: RawFd) -> isize {
    let mut b = 0u8;
    // SAFETY: reads at most one byte into a local.
    unsafe { libc::read(fd, (&raw mut b).cast(), 1) }
}

/// Reads everything buffered (for edge-triggered handlers): returns how many
/// bytes were read. One `read` unless the buffer filled up.
fn read_all(fd: RawFd) -> usize {
    let mut total = 0;
    loop {
        let mut buf = [0u8; 64];
        // SAFETY: reads at most `buf.len()` bytes into a local buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return total;
        }
        total += n as usize;
        if (n as usize) < buf.len() {
            return total;
        }
    }
}

/// For the readiness-based async variants (ringloop-async, tokio): one read
/// of up to 64 bytes. Returns the bytes read and whether the fd is now known
/// to be empty (a short read or EAGAIN on a stream socket), in which case
/// the caller clears its readiness, as tokio's own `TcpStream` does, instead
/// of spending a second `read` to hear EAGAIN.
fn read_some(fd: RawFd) -> (usize, bool) {
    let mut buf = [0u8; 64];
    // SAFETY: reads at most `buf.len()` bytes into a local buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "read: {e}");
        return (0, true);
    }
    (n as usize, (n as usize) < buf.len())
}

/// Reads one byte (level-triggered) or drains the fd (edge-triggered).
fn read_bytes(fd: RawFd, edge: bool) -> usize {
    if edge {
        read_all(fd)
    } else {
        (read1(fd) == 1) as usize
    }
}

fn write1(fd: RawFd) {
    // SAFETY: writes one byte from a static.
    let n = unsafe { libc::write(fd, b"e".as_ptr().cast(), 1) };
    assert_eq!(n, 1, "write: {}", io::Error::last_os_error());
}

/// The chain starts of one round: A pairs spaced N/A apart.
fn starts(p: &Params) -> impl Iterator<Item = usize> {
    let space = (p.pipes / p.active).max(1);
    (0..p.active).map(move |i| (i * space) % p.pipes)
}

/// Shared benchmark counters: bytes read this round, writes left.
#[derive(Default)]
struct Counters {
    count: Cell<usize>,
    writes: Cell<usize>,
}

impl Counters {
    /// Resets the counters for a round and writes the first byte of each chain.
    fn start_round(&self, p: &Params, wfds: &[RawFd]) {
        self.count.set(0);
        self.writes.set(p.writes);
        for i in starts(p) {
            write1(wfds[i]);
        }
    }

    /// Called after a byte was read from pair `idx`: counts it and passes the
    /// token on to the next pair while writes remain.
    fn on_read(&self, idx: usize, wfds: &[RawFd]) {
        self.count.set(self.count.get() + 1);
        let left = self.writes.get();
        if left > 0 {
            self.writes.set(left - 1);
            write1(wfds[(idx + 1) % wfds.len()]);
        }
    }
}

/// Runs warm-up + R rounds: `round` starts the chains, runs until all
/// A + W reads are done and returns how long that took from just after the
/// chains were started (as bench.c times it).
fn rounds(p: &Params, mut round: impl FnMut() -> Duration) -> Duration {
    round();
    let mut times: Vec<Duration> = (0..p.rounds).map(|_| round()).collect();
    median(&mut times)
}

/// Drives the rounds of a callback-API variant: each starts the chains and
/// runs `lp` until every byte is read. Prints the loop's counters for the
/// timed rounds as `name stats:`.
fn loop_rounds(
    lp: &ringloop::EventLoop,
    p: &Params,
    c: &Counters,
    wfds: &[RawFd],
    name: &str,
) -> io::Result<Duration> {
    let target = p.active + p.writes;
    let mut before = None;
    let med = rounds(p, || {
        c.start_round(p, wfds);
        let t = Instant::now();
        while c.count.get() < target {
            lp.run_once().expect("run_once");
        }
        let el = t.elapsed();
        if before.is_none() {
            // The warm-up round is over: count only the timed rounds.
            before = Some(lp.stats().expect("stats"));
        }
        el
    });
    let after = lp.stats().map_err(io::Error::other)?;
    let events = (target * p.rounds) as u64;
    eprintln!(
        "{name} stats: {}",
        common::stats_fields(before.unwrap_or_default(), after, events)
    );
    Ok(med)
}

fn bench_ringloop(p: &Params, edge: bool) -> io::Result<Duration> {
    use ringloop::{EventLoop, Interest, WaitTimeout};
    let interest = if edge {
        Interest::READ | Interest::EDGE
    } else {
        Interest::READ
    };
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        // Experiment switch: the ring without SINGLE_ISSUER/DEFER_TASKRUN.
        .plain_setup(std::env::var_os("RINGLOOP_PLAIN_SETUP").is_some_and(|v| v == "1"))
        .build()
        .map_err(io::Error::other)?;
    let ps = pairs(p.pipes)?;
    let wfds: Rc<Vec<RawFd>> = Rc::new(ps.iter().map(|(_, w)| w.as_raw_fd()).collect());
    let c = Rc::new(Counters::default());
    let mut writers = Vec::new();
    for (idx, (r, w)) in ps.into_iter().enumerate() {
        let (c, wfds) = (c.clone(), wfds.clone());
        lp.add_fd(r, interest, move |_, ev| {
            for _ in 0..read_bytes(ev.fd, edge) {
                c.on_read(idx, &wfds);
            }
        })
        .map_err(io::Error::other)?;
        writers.push(w);
    }
    let name = if edge { "ringloop-edge" } else { "ringloop" };
    let med = loop_rounds(&lp, p, &c, &wfds, name)?;
    drop(writers);
    Ok(med)
}

/// `ringloop-ops`: the callback API with ring-native I/O instead of watches.
/// Each pair has one `RECV` of one byte in flight; its completion counts the
/// byte, sends one byte to the next pair through the ring while writes
/// remain, and submits the next `RECV`. No `read`/`write` syscalls: every
/// transfer rides on the iteration's one `io_uring_enter`.
fn bench_ringloop_ops(p: &Params) -> io::Result<Duration> {
    use ringloop::{EventLoop, Handle, WaitTimeout};
    struct Ctx {
        c: Counters,
        rfds: Vec<RawFd>,
        wfds: Vec<RawFd>,
        /// One receive byte per pair; only the kernel writes it.
        bufs: Vec<Cell<u8>>,
    }
    fn arm_recv(h: &Handle, ctx: Rc<Ctx>, idx: usize) {
        let entry = io_uring::opcode::Recv::new(
            io_uring::types::Fd(ctx.rfds[idx]),
            ctx.bufs[idx].as_ptr(),
            1,
        )
        // IORING_RECVSEND_POLL_FIRST: the socket was just drained, so skip
        // the doomed first attempt and wait for readiness straight away.
        .ioprio(1)
        .build();
        let c2 = ctx.clone();
        // SAFETY: the buffer lives in `ctx`, which the callback keeps alive.
        unsafe {
            h.submit(entry, move |h, comp| {
                if comp.result == -libc::ECANCELED {
                    return; // the loop is being dropped
                }
                assert_eq!(comp.result, 1, "recv");
                c2.c.count.set(c2.c.count.get() + 1);
                let left = c2.c.writes.get();
                if left > 0 {
                    c2.c.writes.set(left - 1);
                    let next = c2.wfds[(idx + 1) % c2.wfds.len()];
                    let send =
                        io_uring::opcode::Send::new(io_uring::types::Fd(next), b"e".as_ptr(), 1)
                            .build();
                    // SAFETY: the buffer is a static.
                    h.submit(send, |_, comp| {
                        // A send still in flight when the loop is dropped is cancelled.
                        assert!(comp.result == 1 || comp.result == -libc::ECANCELED, "send");
                    })
                    .expect("submit send");
                }
                arm_recv(h, c2, idx);
            })
        }
        .expect("submit recv");
    }
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        .build()
        .map_err(io::Error::other)?;
    let ps = pairs(p.pipes)?;
    let ctx = Rc::new(Ctx {
        c: Counters::default(),
        rfds: ps.iter().map(|(r, _)| r.as_raw_fd()).collect(),
        wfds: ps.iter().map(|(_, w)| w.as_raw_fd()).collect(),
        bufs: (0..p.pipes).map(|_| Cell::new(0)).collect(),
    });
    for idx in 0..p.pipes {
        arm_recv(&lp.handle(), ctx.clone(), idx);
    }
    let med = loop_rounds(&lp, p, &ctx.c, &ctx.wfds, "ringloop-ops")?;
    drop(lp);
    drop(ps);
    Ok(med)
}

fn bench_epoll(p: &Params, edge: bool) -> io::Result<Duration> {
    // SAFETY: plain syscall; the fd is wrapped at once.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    let ps = pairs(p.pipes)?;
    let wfds: Vec<RawFd> = ps.iter().map(|(_, w)| w.as_raw_fd()).collect();
    let rfds: Vec<RawFd> = ps.iter().map(|(r, _)| r.as_raw_fd()).collect();
    for (idx, &fd) in rfds.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32 | if edge { libc::EPOLLET as u32 } else { 0 },
            u64: idx as u64,
        };
        // SAFETY: registers a live fd with a valid event struct.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let c = Counters::default();
    let target = p.active + p.writes;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut waits = 0u64;
    let med = rounds(p, || {
        c.start_round(p, &wfds);
        let t = Instant::now();
        while c.count.get() < target {
            // SAFETY: `events` has room for the count we pass.
            let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
            waits += 1;
            for ev in &events[..n.max(0) as usize] {
                let idx = ev.u64 as usize;
                for _ in 0..read_bytes(rfds[idx], edge) {
                    c.on_read(idx, &wfds);
                }
            }
        }
        t.elapsed()
    });
    let events_total = (target * (p.rounds + 1)) as f64;
    eprintln!(
        "epoll stats: epoll_wait={waits} waits_per_event={:.3}",
        waits as f64 / events_total
    );
    // SAFETY: closes the epoll fd we created.
    unsafe { libc::close(ep) };
    drop(ps);
    Ok(med)
}

/// How a `uring-raw` variant watches its fds.
#[derive(Clone, Copy, PartialEq)]
enum RawMode {
    /// A one-shot `POLL_ADD` re-armed after every read (level-triggered).
    Level,
    /// The same with the fds registered as fixed files (no `fget`/`fput`).
    LevelFixed,
    /// One multishot `POLL_ADD` per fd; handlers drain (edge-triggered).
    Edge,
}

/// `uring-raw`, `uring-raw-fixed`, `uring-raw-edge`: the least a loop on
/// io_uring can do, written with the `io-uring` crate and nothing else, on a
/// ring set up as ringloop's is (`SINGLE_ISSUER | DEFER_TASKRUN`, registered
/// ring fd). Like the `epoll` loop it runs every handler of a batch, has no
/// timers, no fairness and no cancel-on-close, and keeps no table: a poll's
/// `user_data` is its pair's index. What separates it from `epoll` is the
/// kernel's price for polling through the ring; what separates `ringloop`
/// from it is ringloop's own.
fn bench_uring_raw(p: &Params, mode: RawMode) -> io::Result<Duration> {
    use io_uring::{IoUring, cqueue, opcode, squeue, types};
    let sq = (p.pipes.clamp(64, 4096)).next_power_of_two() as u32;
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .setup_cqsize(4 * sq)
        .build(sq)?;
    ring.submitter().register_ring_fd()?;
    let ps = pairs(p.pipes)?;
    let wfds: Vec<RawFd> = ps.iter().map(|(_, w)| w.as_raw_fd()).collect();
    let rfds: Vec<RawFd> = ps.iter().map(|(r, _)| r.as_raw_fd()).collect();
    if mode == RawMode::LevelFixed {
        ring.submitter().register_files(&rfds)?;
    }
    let poll = |idx: usize| -> squeue::Entry {
        let mask = libc::POLLIN as u32;
        match mode {
            RawMode::LevelFixed => opcode::PollAdd::new(types::Fixed(idx as u32), mask).build(),
            _ => opcode::PollAdd::new(types::Fd(rfds[idx]), mask)
                .multi(mode == RawMode::Edge)
                .build(),
        }
        .user_data(idx as u64)
    };
    let push = |ring: &mut IoUring, e: &squeue::Entry| -> io::Result<()> {
        // SAFETY: a poll points at no memory of ours.
        while unsafe { ring.submission().push(e) }.is_err() {
            ring.submit()?;
        }
        Ok(())
    };
    for idx in 0..p.pipes {
        push(&mut ring, &poll(idx))?;
    }
    ring.submit()?;
    let c = Counters::default();
    let target = p.active + p.writes;
    let edge = mode == RawMode::Edge;
    let mut batch: Vec<(usize, i32, bool)> = Vec::with_capacity(4 * sq as usize);
    let mut waits = 0u64;
    let med = rounds(p, || {
        c.start_round(p, &wfds);
        let t = Instant::now();
        while c.count.get() < target {
            ring.submit_and_wait(1).expect("submit_and_wait");
            waits += 1;
            batch.extend(
                ring.completion()
                    .map(|e| (e.user_data() as usize, e.result(), cqueue::more(e.flags()))),
            );
            for (idx, res, more) in batch.drain(..) {
                assert!(res > 0, "poll: {res}");
                for _ in 0..read_bytes(rfds[idx], edge) {
                    c.on_read(idx, &wfds);
                }
                // Level: poll again. Edge: only if the kernel ended the multishot.
                if !more {
                    push(&mut ring, &poll(idx)).expect("re-arm poll");
                }
            }
        }
        t.elapsed()
    });
    let events_total = (target * (p.rounds + 1)) as f64;
    eprintln!(
        "uring-raw stats: waits={waits} waits_per_event={:.3}",
        waits as f64 / events_total
    );
    drop(ring);
    drop(ps);
    Ok(med)
}

fn bench_tokio(p: &Params) -> io::Result<Duration> {
    use tokio::io::unix::AsyncFd;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let ps = pairs(p.pipes)?;
    let wfds: Rc<Vec<RawFd>> = Rc::new(ps.iter().map(|(_, w)| w.as_raw_fd()).collect());
    let c = Rc::new(Counters::default());
    let done = Rc::new(tokio::sync::Notify::new());
    let target = p.active + p.writes;
    let local = tokio::task::LocalSet::new();
    let mut writers = Vec::new();
    for (idx, (r, w)) in ps.into_iter().enumerate() {
        writers.push(w);
        let (c, wfds, done) = (c.clone(), wfds.clone(), done.clone());
        local.spawn_local(async move {
            // SAFETY: the OwnedFd moves into the AsyncFd and stays open as long as it.
            let afd = unsafe { AsyncFd::register(r) }.expect("AsyncFd");
            loop {
                let mut guard = afd.readable().await.expect("readable");
                let (n, drained) = read_some(afd.as_raw_fd());
                if drained {
                    guard.clear_ready();
                }
                for _ in 0..n {
                    c.on_read(idx, &wfds);
                    if c.count.get() == target {
                        done.notify_one();
                    }
                }
            }
        });
    }
    let med = local.block_on(&rt, async {
        // Let every task register its fd before the first round.
        tokio::task::yield_now().await;
        let mut times = Vec::new();
        for r in 0..=p.rounds {
            c.start_round(p, &wfds);
            let t = Instant::now();
            done.notified().await;
            if r > 0 {
                times.push(t.elapsed());
            }
        }
        median(&mut times)
    });
    drop(writers);
    Ok(med)
}

/// A one-waiter "the round is done" signal for the ringloop-async variant.
#[derive(Default)]
struct DoneSignal {
    done: Cell<bool>,
    waker: Cell<Option<std::task::Waker>>,
}

impl DoneSignal {
    fn set(&self) {
        self.done.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.done.replace(false) {
                std::task::Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// The runtime of the futures variants: a loop that waits without a timeout.
fn forever_runtime() -> io::Result<ringloop::rt::Runtime> {
    let lp = ringloop::EventLoop::builder()
        .wait_timeout(ringloop::WaitTimeout::Forever)
        .build()
        .map_err(io::Error::other)?;
    ringloop::rt::Runtime::with_loop(lp).map_err(io::Error::other)
}

/// Drives the rounds of a ringloop futures variant whose tasks are spawned on
/// `rt`: warm-up plus R timed rounds, each starting the chains and awaiting
/// `done`. Prints the loop's counters for the timed rounds as `name stats:`.
fn async_rounds(
    rt: &ringloop::rt::Runtime,
    p: &Params,
    c: &Counters,
    done: &DoneSignal,
    wfds: &[RawFd],
    name: &str,
) -> Duration {
    let handle = rt.handle();
    let target = p.active + p.writes;
    let (med, stats) = rt.block_on(async {
        // Let every task register its fd before the first round.
        ringloop::rt::yield_now().await;
        let mut times = Vec::new();
        let mut before = None;
        for r in 0..=p.rounds {
            c.start_round(p, wfds);
            let t = Instant::now();
            done.wait().await;
            if r > 0 {
                times.push(t.elapsed());
            } else {
                before = handle.stats().ok();
            }
        }
        let after = handle.stats().unwrap_or_default();
        let events = (target * p.rounds) as u64;
        (
            median(&mut times),
            common::stats_fields(before.unwrap_or_default(), after, events),
        )
    });
    eprintln!("{name} stats: {stats}");
    med
}

fn bench_ringloop_async(p: &Params) -> io::Result<Duration> {
    use ringloop::io::AsyncFd;
    let rt = forever_runtime()?;
    let ps = pairs(p.pipes)?;
    let wfds: Rc<Vec<RawFd>> = Rc::new(ps.iter().map(|(_, w)| w.as_raw_fd()).collect());
    let c = Rc::new(Counters::default());
    let done = Rc::new(DoneSignal::default());
    let target = p.active + p.writes;
    let mut writers = Vec::new();
    for (idx, (r, w)) in ps.into_iter().enumerate() {
        writers.push(w);
        let (c, wfds, done) = (c.clone(), wfds.clone(), done.clone());
        rt.spawn(async move {
            let afd = AsyncFd::new(r).expect("AsyncFd");
            loop {
                let mut guard = afd.readable().await.expect("readable");
                let (n, drained) = read_some(afd.get_ref().as_raw_fd());
                if drained {
                    guard.clear_ready();
                }
                for _ in 0..n {
                    c.on_read(idx, &wfds);
                    if c.count.get() == target {
                        done.set();
                    }
                }
            }
        });
    }
    let med = async_rounds(&rt, p, &c, &done, &wfds, "ringloop-async");
    drop(rt);
    drop(writers);
    Ok(med)
}

/// Polls two futures together until both are done.
async fn join2<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(move |cx| {
        if ra.is_none()
            && let std::task::Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let std::task::Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready((ra.take().expect("a"), rb.take().expect("b")))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// `ringloop-async-ops`: the futures API's own sockets (`ringloop::net`),
/// whose reads and writes are io_uring operations. One task per pair reads;
/// when it passes the token on, its write to the next pair and its own next
/// read are submitted together, so neither costs a syscall of its own.
///
/// `ringloop-async-multi` is the same with `enable_multishot_recv` on every
/// reader: one multishot receive per pair into the loop's buffer pool, so
/// a read submits nothing and arms no poll.
fn bench_ringloop_async_ops(p: &Params, multishot: bool) -> io::Result<Duration> {
    use ringloop::net::UnixStream as RingStream;
    let rt = forever_runtime()?;
    let ps = pairs(p.pipes)?;
    let wfds: Vec<RawFd> = ps.iter().map(|(_, w)| w.as_raw_fd()).collect();
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (r, w) in ps {
        readers.push(RingStream::from_std(r.into()));
        writers.push(RingStream::from_std(w.into()));
    }
    let writers = Rc::new(writers);
    let c = Rc::new(Counters::default());
    let done = Rc::new(DoneSignal::default());
    let target = p.active + p.writes;
    for (idx, me) in readers.into_iter().enumerate() {
        let (c, writers, done) = (c.clone(), writers.clone(), done.clone());
        rt.spawn(async move {
            if multishot {
                me.enable_multishot_recv().expect("multishot receive");
            }
            let next = &writers[(idx + 1) % writers.len()];
            let mut rbuf = Vec::with_capacity(64);
            let mut wbuf = vec![b'e'];
            let (mut r, mut b) = me.read(rbuf).await;
            loop {
                let n = r.expect("read");
                assert!(n > 0, "unexpected EOF");
                rbuf = b;
                rbuf.clear();
                let mut send = 0;
                for _ in 0..n {
                    c.count.set(c.count.get() + 1);
                    let left = c.writes.get();
                    if left > 0 {
                        c.writes.set(left - 1);
                        send += 1;
                    }
                    if c.count.get() == target {
                        done.set();
                    }
                }
                if send == 0 {
                    (r, b) = me.read(rbuf).await;
                    continue;
                }
                wbuf.resize(send, b'e');
                let ((wr, wb), (rr, rb)) = join2(next.write_all(wbuf), me.read(rbuf)).await;
                wr.expect("write");
                wbuf = wb;
                (r, b) = (rr, rb);
            }
        });
    }
    let name = if multishot {
        "ringloop-async-multi"
    } else {
        "ringloop-async-ops"
    };
    let med = async_rounds(&rt, p, &c, &done, &wfds, name);
    drop(rt);
    Ok(med)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(variant) = args.first().cloned() else {
        eprintln!(
            "usage: pipe_bench ringloop|ringloop-edge|ringloop-ops|ringloop-async|\
             ringloop-async-ops|ringloop-async-multi|epoll|epoll-edge|tokio|\
             uring-raw|uring-raw-fixed|uring-raw-edge -n N -a A -w W -r R"
        );
        std::process::exit(2);
    };
    let p = Params {
        pipes: flag(&args, "-n", 100),
        active: flag(&args, "-a", 1),
        writes: flag(&args, "-w", 100),
        rounds: flag(&args, "-r", 25),
    };
    if p.pipes == 0 || p.active == 0 || p.active > p.pipes || p.rounds == 0 {
        eprintln!("need 0 < active <= pipes and rounds > 0");
        std::process::exit(2);
    }
    raise_nofile();
    let result = match variant.as_str() {
        "ringloop" => bench_ringloop(&p, false),
        "ringloop-edge" => bench_ringloop(&p, true),
        "ringloop-async" => bench_ringloop_async(&p),
        "ringloop-ops" => bench_ringloop_ops(&p),
        "ringloop-async-ops" => bench_ringloop_async_ops(&p, false),
        "ringloop-async-multi" => bench_ringloop_async_ops(&p, true),
        "epoll" => bench_epoll(&p, false),
        "epoll-edge" => bench_epoll(&p, true),
        "tokio" => bench_tokio(&p),
        "uring-raw" => bench_uring_raw(&p, RawMode::Level),
        "uring-raw-fixed" => bench_uring_raw(&p, RawMode::LevelFixed),
        "uring-raw-edge" => bench_uring_raw(&p, RawMode::Edge),
        other => {
            eprintln!("unknown variant {other}");
            std::process::exit(2);
        }
    };
    match result {
        Ok(med) => {
            let events = (p.active + p.writes) as f64;
            println!(
                "{variant} pipes={} active={} writes={} rounds={} median_us={:.1} events_per_s={:.0}",
                p.pipes,
                p.active,
                p.writes,
                p.rounds,
                common::us(med),
                events / med.as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("{variant}: {e}");
            std::process::exit(1);
        }
    }
}
