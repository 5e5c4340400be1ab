//! AsyncFd readiness, signal streams and files.

mod common;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::unix_stream_pair;
use ringloop::io::AsyncFd;
use ringloop::{fs, rt, signal, time};

async fn read_some(fd: &AsyncFd<UnixStream>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        if let Ok(r) = guard.try_io(|mut s| s.read(buf)) {
            return r;
        }
    }
}

#[test]
fn asyncfd_read_write_both_modes() {
    for multishot in [true, false] {
        rt::block_on(async {
            let (a, b) = unix_stream_pair();
            let a = AsyncFd::with_mode(a, multishot).unwrap();
            let b = AsyncFd::with_mode(b, multishot).unwrap();
            for i in 0..200u32 {
                let msg = i.to_le_bytes();
                loop {
                    let mut g = a.writable().await.unwrap();
                    if let Ok(r) = g.try_io(|mut s| s.write(&msg)) {
                        assert_eq!(r.unwrap(), 4);
                        break;
                    }
                }
                let mut buf = [0u8; 4];
                let n = read_some(&b, &mut buf).await.unwrap();
                assert_eq!(n, 4);
                assert_eq!(u32::from_le_bytes(buf), i);
            }
        });
    }
}

#[test]
fn asyncfd_readable_waits_after_would_block() {
    for multishot in [true, false] {
        rt::block_on(async {
            let (a, mut b) = unix_stream_pair();
            let a = AsyncFd::with_mode(a, multishot).unwrap();
            // Nothing to read: readable() must not complete.
            let r = time::timeout(Duration::from_millis(30), a.readable()).await;
            assert!(r.is_err(), "readable with no data (multishot={multishot})");
            b.write_all(b"x").unwrap();
            let mut buf = [0u8; 8];
            assert_eq!(read_some(&a, &mut buf).await.unwrap(), 1);
            // Drained: next read hits WouldBlock, clears, and waits again.
            let mut g = a.readable().await.unwrap();
            assert!(
                g.try_io(|mut s| s.read(&mut buf)).is_err(),
                "WouldBlock clears readiness"
            );

            let r = time::timeout(Duration::from_millis(30), a.readable()).await;
            assert!(r.is_err(), "readiness was cleared (multishot={multishot})");
            // A write from another thread wakes the blocked loop.
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                b.write_all(b"yz").unwrap();
                b
            });
            assert_eq!(read_some(&a, &mut buf).await.unwrap(), 2);
            drop(t.join().unwrap());
        });
    }
}

#[test]
fn asyncfd_surfaces_hangup() {
    for multishot in [true, false] {
        rt::block_on(async {
            let (a, b) = unix_stream_pair();
            let a = AsyncFd::with_mode(a, multishot).unwrap();
            drop(b);
            let g = time::timeout(Duration::from_secs(10), a.readable())
                .await
                .expect("hang-up makes it readable")
                .unwrap();
            assert!(g.ready().is_read_closed(), "{:?}", g.ready());

            let mut buf = [0u8; 4];
            assert_eq!(read_some(&a, &mut buf).await.unwrap(), 0);
            // Readiness of a closed side is never cleared: no hang.
            let mut g = a.readable().await.unwrap();
            g.clear_ready();

            time::timeout(Duration::from_secs(10), a.readable())
                .await
                .expect("closed stays ready")
                .unwrap();
            // Writing: writable reports the hang-up, the write fails.
            let mut g = time::timeout(Duration::from_secs(10), a.writable())
                .await
                .expect("hang-up makes it writable")
                .unwrap();
            let r = g.try_io(|mut s| s.write(b"x")).unwrap();
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        });
    }
}

#[test]
fn asyncfd_not_pollable_or_without_runtime_errors() {
    // No runtime.
    let (a, _b) = unix_stream_pair();
    assert!(AsyncFd::new(a).is_err());
    // A regular file: not pollable. Either registering or waiting fails, or
    // it reports ready (regular files are always ready): never a hang.
    rt::block_on(async {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        if let Ok(fd) = AsyncFd::new(f) {
            let r = time::timeout(Duration::from_secs(10), fd.readable()).await;
            assert!(r.is_ok(), "no hang on a regular file");
        }
        let (a, _b) = unix_stream_pair();
        let fd = AsyncFd::new(a).unwrap();
        let inner = fd.into_inner();
        inner.set_nonblocking(false).unwrap();
    });
}

/// An fd the kernel cannot poll must not spin the loop: a multishot poll
/// of one ends as soon as it is armed, and re-arming it for ever made about
/// a million completions a second with nothing waiting. Regular files and
/// directories are refused up front (`EPERM`, as `epoll_ctl`); a device
/// without a poll method (`/dev/null`) ends up failing its waits with
/// `EPERM`, and the loop goes quiet. Found by an audit probe.
#[test]
fn asyncfd_on_an_unpollable_fd_does_not_spin_the_loop() {
    rt::block_on(async {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let err = AsyncFd::new(file).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        let dir = std::fs::File::open("/").unwrap();
        assert_eq!(
            AsyncFd::new(dir).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );

        let h = rt::current_handle().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let fd = AsyncFd::new(null).unwrap();
        time::sleep(Duration::from_millis(50)).await;
        let before = h.stats().unwrap().completions;
        time::sleep(Duration::from_millis(200)).await;
        let spun = h.stats().unwrap().completions - before;
        assert!(spun < 50, "{spun} completions in 200 ms with nothing to do");
        let waited = time::timeout(Duration::from_secs(10), fd.readable()).await;
        let err = waited.expect("no hang").expect_err("the wait fails");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    });
}

#[test]
fn signals_arrive_as_a_stream() {
    rt::block_on(async {
        let mut s = signal::signal(libc::SIGUSR2).unwrap();
        assert_eq!(s.signo(), libc::SIGUSR2);
        // SAFETY: raising a signal the loop has blocked and is watching.
        unsafe { libc::raise(libc::SIGUSR2) };
        let n = time::timeout(Duration::from_secs(10), s.recv())
            .await
            .expect("signal delivered")
            .unwrap();
        assert!(n >= 1);
        assert!(signal::signal(libc::SIGKILL).is_err());
        assert!(signal::signal(0).is_err());
        assert!(signal::signal(100_000).is_err());
    });
    assert!(signal::signal(libc::SIGUSR2).is_err(), "no runtime");
}

#[test]
fn files_read_write_fsync_at_offsets() {
    let path = std::env::temp_dir().join(format!("ringloop-rt-io-{}", std::process::id()));
    rt::block_on(async {
        let f = fs::File::create(&path).await.unwrap();
        f.write_all_at(b"0123456789".to_vec(), 0).await.0.unwrap();
        let (r, _) = f.write_at(b"AB".to_vec(), 4).await;
        assert_eq!(r.unwrap(), 2);
        f.sync_all().await.unwrap();
        f.sync_data().await.unwrap();
        let f = fs::File::open(&path).await.unwrap();
        let (r, buf) = f.read_at(Vec::with_capacity(64), 0).await;
        assert_eq!(r.unwrap(), 10);
        assert_eq!(&buf, b"0123AB6789");
        let (r, buf) = f.read_at(Vec::with_capacity(3), 7).await;
        assert_eq!((r.unwrap(), &buf[..]), (3, &b"789"[..]));
        let (r, _) = f.read_at(Vec::with_capacity(3), 100).await;
        assert_eq!(r.unwrap(), 0, "past the end is EOF");
        // Writing a read-only file: EBADF as an io::Error.
        let (r, _) = f.write_at(b"x".to_vec(), 0).await;
        assert!(r.is_err());
        let missing = fs::File::open(path.with_extension("missing"))
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let nul = fs::File::open("a\0b").await.unwrap_err();
        assert_eq!(nul.kind(), io::ErrorKind::InvalidInput);
    });
    std::fs::remove_file(&path).unwrap();
}

/// Offsets that are negative as an `off_t` are `EINVAL`, as for `pread`
/// and `pwrite`: io_uring alone would read `u64::MAX` (-1) as "at the file
/// position, and move it", and write in the wrong place. Found by an audit
/// probe.
#[test]
fn files_refuse_offsets_past_i64_max() {
    let path = std::env::temp_dir().join(format!("ringloop-rt-io-off-{}", std::process::id()));
    rt::block_on(async {
        let f = fs::File::create(&path).await.unwrap();
        f.write_all_at(b"0123456789".to_vec(), 0).await.0.unwrap();
        for offset in [u64::MAX, i64::MAX as u64 + 1] {
            let (r, _) = f.write_at(b"XY".to_vec(), offset).await;
            assert_eq!(
                r.unwrap_err().raw_os_error(),
                Some(libc::EINVAL),
                "{offset}"
            );
            let (r, _) = f.write_all_at(b"XY".to_vec(), offset).await;
            assert_eq!(
                r.unwrap_err().raw_os_error(),
                Some(libc::EINVAL),
                "{offset}"
            );
        }
        let f = fs::File::open(&path).await.unwrap();
        let (r, buf) = f.read_at(Vec::with_capacity(3), u64::MAX).await;
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        assert!(buf.is_empty());
        let (r, _) = f.read_at(Vec::with_capacity(16), 0).await;
        assert_eq!(r.unwrap(), 10);
    });
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"0123456789",
        "nothing written"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn raw_op_submit_from_a_library() {
    use io_uring::opcode;
    rt::block_on(async {
        // SAFETY: NOP points at no memory.
        let (c, res) = unsafe { ringloop::op::submit(opcode::Nop::new().build(), 5u8) }.await;
        assert_eq!((c.result, res), (0, 5));
        // A timeout op: resources and completion come back.
        let ts = Box::new(io_uring::types::Timespec::new().nsec(1_000_000));
        let entry = opcode::Timeout::new(&*ts).build();
        // SAFETY: the boxed timespec is owned by the operation.
        let (c, _ts) = unsafe { ringloop::op::submit(entry, ts) }.await;
        assert_eq!(c.result, -libc::ETIME);
        // Dropping it mid-flight cancels it.
        let ts = Box::new(io_uring::types::Timespec::new().sec(3600));
        let entry = opcode::Timeout::new(&*ts).build();
        // SAFETY: as above.
        let op = unsafe { ringloop::op::submit(entry, ts) };
        assert!(time::timeout(Duration::from_millis(5), op).await.is_err());
    });
    // No runtime: resolves at once with -ECANCELED.
    // SAFETY: NOP points at no memory.
    let op = unsafe { ringloop::op::submit(io_uring::opcode::Nop::new().build(), ()) };
    let mut op = std::pin::pin!(op);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(op.as_mut(), &mut cx) {
        std::task::Poll::Ready((c, ())) => assert_eq!(c.result, -libc::ECANCELED),
        std::task::Poll::Pending => panic!("must not wait without a runtime"),
    }
}

#[test]
fn dropping_an_asyncfd_with_a_poll_armed_makes_the_peer_see_eof_at_once() {
    for multishot in [true, false] {
        rt::block_on(async {
            let (a, mut b) = unix_stream_pair();
            let a = AsyncFd::with_mode(a, multishot).unwrap();
            // Wait for readability long enough for the poll to be in the kernel.
            let waited = time::timeout(Duration::from_millis(5), a.readable()).await;
            assert!(waited.is_err(), "nothing was written, so not readable");
            // On a slow machine (TCG) the timeout can be due before the
            // loop's first wait has handed the poll to the kernel: hand it
            // over now, so that the drop has a poll to cancel.
            rt::current_handle().unwrap().flush().unwrap();
            drop(a);
            // No loop iteration in between: the peer must already see EOF.
            let mut buf = [0u8; 1];
            assert_eq!(b.read(&mut buf).unwrap(), 0, "multishot={multishot}");
        });
    }
}

/// The same with the kernel busy: 200 other fds have just become ready, so
/// on a `DEFER_TASKRUN` ring the cancelled poll's end waits behind more task
/// work than one `io_uring_enter` runs. The drop still returns only once the
/// kernel has let go of the file.
#[test]
fn dropping_an_asyncfd_while_many_fds_are_ready_still_releases_its_file() {
    rt::block_on(async {
        let (a, mut b) = unix_stream_pair();
        b.set_nonblocking(true).unwrap();
        let a = AsyncFd::new(a).unwrap();
        let mut others: Vec<_> = (0..200)
            .map(|_| {
                let (x, y) = unix_stream_pair();
                (AsyncFd::new(x).unwrap(), y)
            })
            .collect();
        // Every poll is in the kernel.
        rt::current_handle().unwrap().flush().unwrap();
        for (_, y) in &mut others {
            y.write_all(b"x").unwrap();
        }
        drop(a);
        let mut buf = [0u8; 1];
        let read = b.read(&mut buf);
        assert_eq!(read.ok(), Some(0), "the peer sees EOF as the drop returns");
        // The other fds' readiness was kept, not lost.
        for (fd, _) in &others {
            let ready = time::timeout(Duration::from_secs(20), fd.readable()).await;
            assert!(ready.is_ok_and(|r| r.is_ok()));
        }
    });
}

/// Borrows a raw fd that the test closes behind the `AsyncFd`'s back.
struct Raw(std::os::fd::RawFd);

impl std::os::fd::AsFd for Raw {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: test-only; the fd stays a valid number for as long as the
        // kernel's poll holds the file, which is what the test checks.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) }
    }
}

/// traps.md, tokio#7563: an `AsyncFd` whose fd was closed behind its back
/// still deregisters when dropped. Its poll is found by operation id, not by
/// fd number, so the kernel lets go of the file (the peer sees EOF) and
/// nothing stays in flight.
#[test]
fn asyncfd_whose_fd_was_closed_behind_its_back_still_deregisters() {
    use std::os::fd::IntoRawFd;
    for multishot in [true, false] {
        let runtime = rt::Runtime::new().unwrap();
        let h = runtime.handle();
        runtime.block_on(async {
            let (a, mut b) = unix_stream_pair();
            let raw = a.into_raw_fd();
            let baseline = h.stats().unwrap().in_flight;
            let fd = AsyncFd::with_mode(Raw(raw), multishot).unwrap();
            // A poll-style wait stays registered (it has no future whose
            // drop takes it out), so a watch's poll stays armed.
            std::future::poll_fn(|cx| {
                assert!(fd.poll_read_ready(cx).is_pending(), "nothing to read yet");
                std::task::Poll::Ready(())
            })
            .await;
            // Submit the poll now, before closing the fd.
            h.flush().unwrap();
            // SAFETY: deliberately closes the watched fd behind the AsyncFd.
            unsafe { libc::close(raw) };
            assert!(
                b.read(&mut [0u8; 1]).is_err(),
                "multishot={multishot}: the armed poll keeps the file open (kernel fact)"
            );
            drop(fd);
            assert_eq!(
                b.read(&mut [0u8; 1]).unwrap(),
                0,
                "multishot={multishot}: the registration still holds the file"
            );
            time::sleep(Duration::from_millis(20)).await;
            assert_eq!(
                h.stats().unwrap().in_flight,
                baseline,
                "multishot={multishot}: the registration leaked"
            );
        });
    }
}

/// traps.md, tokio#4549: a hang-up stays visible on the `AsyncFd` (it cannot
/// be cleared), but an `AsyncFd` nobody waits on does not make the loop
/// spin: the loop sleeps.
#[test]
fn idle_asyncfd_on_a_hung_up_fd_lets_the_loop_sleep() {
    for multishot in [true, false] {
        let runtime = rt::Runtime::new().unwrap();
        let h = runtime.handle();
        runtime.block_on(async {
            let (a, b) = unix_stream_pair();
            let fd = AsyncFd::with_mode(a, multishot).unwrap();
            drop(b);
            assert!(fd.readable().await.unwrap().ready().is_read_closed());
            time::sleep(Duration::from_millis(10)).await;
            let before = h.stats().unwrap();
            time::sleep(Duration::from_millis(100)).await;
            let after = h.stats().unwrap();
            assert!(
                after.completions - before.completions <= 2,
                "multishot={multishot}: spinning on HUP: {before:?} -> {after:?}"
            );
            assert!(
                after.iterations - before.iterations <= 10,
                "multishot={multishot}: spinning: {before:?} -> {after:?}"
            );
            drop(fd);
        });
    }
}

/// traps.md, ClickHouse/silk#80: the kernel may end a multishot poll (a
/// final completion without `F_MORE`, as on CQ overflow). The `AsyncFd`
/// arms it again, so data arriving later still wakes its reader. The end is
/// simulated with an `ASYNC_CANCEL` of the poll, which gives the same final
/// completion.
#[test]
fn asyncfd_multishot_ended_by_the_kernel_is_rearmed() {
    use std::collections::HashSet;
    let runtime = rt::Runtime::new().unwrap();
    let h = runtime.handle();
    runtime.block_on(async {
        let (a, mut b) = unix_stream_pair();
        let before: HashSet<u64> = h.in_flight_user_data().unwrap().into_iter().collect();
        // The operations in flight that were not there before the AsyncFd.
        let new_ops = || -> Vec<u64> {
            h.in_flight_user_data()
                .unwrap()
                .into_iter()
                .filter(|u| !before.contains(u))
                .collect()
        };
        let fd = AsyncFd::new(a).unwrap();
        let idle = time::timeout(Duration::from_millis(5), fd.readable()).await;
        assert!(idle.is_err(), "nothing to read yet");
        let polls = new_ops();
        assert_eq!(polls.len(), 1, "the AsyncFd's poll");
        let cancel = io_uring::opcode::AsyncCancel::new(polls[0]).build();
        let cancelled = std::rc::Rc::new(std::cell::Cell::new(false));
        let done = cancelled.clone();
        // SAFETY: ASYNC_CANCEL points at no memory.
        unsafe {
            h.submit(cancel, move |_, c| {
                assert_eq!(c.result, 0);
                done.set(true);
            })
        }
        .unwrap();
        // The cancel is itself an operation in flight until its callback
        // has run. After that the only new operation is the poll, under its
        // first id whether or not its final completion is in yet: the loop
        // re-arms it in place.
        for _ in 0..3000 {
            if cancelled.get() {
                break;
            }
            time::sleep(Duration::from_millis(1)).await;
        }
        assert!(cancelled.get(), "the cancel never completed");
        assert_eq!(new_ops(), polls, "re-armed in place, under the same id");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            b.write_all(b"x").unwrap();
            b
        });
        let mut buf = [0u8; 4];
        let n = time::timeout(Duration::from_secs(3), read_some(&fd, &mut buf))
            .await
            .expect("deaf AsyncFd after its multishot poll ended")
            .unwrap();
        assert_eq!(n, 1);
        drop(writer.join().unwrap());
    });
}

/// Readiness reaches the waiting tasks as the loop reaps it, not through a
/// handler per fd: 64 fds becoming ready at once cost no handler, and far
/// fewer loop iterations than fds.
#[test]
fn asyncfd_readiness_wakes_tasks_without_a_handler_each() {
    const N: usize = 64;
    let runtime = rt::Runtime::new().unwrap();
    let h = runtime.handle();
    let (readers, mut writers): (Vec<_>, Vec<_>) = (0..N).map(|_| unix_stream_pair()).unzip();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|a| {
            runtime.spawn(async move {
                let fd = AsyncFd::new(a).unwrap();
                let mut buf = [0u8; 4];
                read_some(&fd, &mut buf).await.unwrap()
            })
        })
        .collect();
    runtime.block_on(async {
        // Every task has armed its poll and waits.
        time::sleep(Duration::from_millis(20)).await;
        let before = h.stats().unwrap();
        for w in &mut writers {
            w.write_all(b"x").unwrap();
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let after = h.stats().unwrap();
        assert_eq!(total, N, "every task read its byte");
        assert_eq!(
            after.handlers - before.handlers,
            0,
            "readiness ran no handler"
        );
        let iterations = after.iterations - before.iterations;
        assert!(
            iterations < N as u64 / 2,
            "{iterations} iterations for {N} fds"
        );
    });
}

/// A runtime whose loop has an 8-entry completion queue, which a few dozen
/// ready fds overflow.
fn runtime_with_tiny_cq() -> rt::Runtime {
    let lp = ringloop::EventLoop::builder()
        .sq_entries(4)
        .cq_entries(8)
        .build()
        .unwrap();
    rt::Runtime::with_loop(lp).unwrap()
}

/// A CQ overflow ends multishot polls (the kernel cannot post their next
/// completion); the loop arms them again, and the fds keep waking their
/// tasks: three rounds of 48 fds through an 8-entry completion queue.
#[test]
fn asyncfd_polls_ended_by_a_cq_overflow_keep_working() {
    const N: usize = 48;
    let runtime = runtime_with_tiny_cq();
    let h = runtime.handle();
    runtime.block_on(async {
        let (readers, mut writers): (Vec<_>, Vec<_>) = (0..N).map(|_| unix_stream_pair()).unzip();
        let fds: Vec<AsyncFd<UnixStream>> = readers
            .into_iter()
            .map(|a| AsyncFd::new(a).unwrap())
            .collect();
        let before = h.stats().unwrap();
        for round in 0..3u8 {
            for w in &mut writers {
                w.write_all(&[round]).unwrap();
            }
            for fd in &fds {
                let mut buf = [0u8; 4];
                let n = time::timeout(Duration::from_secs(3), read_some(fd, &mut buf))
                    .await
                    .expect("an AsyncFd went deaf after a CQ overflow")
                    .unwrap();
                assert_eq!(&buf[..n], &[round]);
            }
            // Let every poll report the now-empty socket before the next round.
            time::sleep(Duration::from_millis(5)).await;
        }
        let after = h.stats().unwrap();
        assert!(
            after.overflow_flushes > before.overflow_flushes,
            "the completion queue never overflowed: the test tests nothing"
        );
    });
}

/// An AsyncFd that outlives its runtime: the loop's teardown ends the poll
/// (and lets go of the file), and the fd then reports an error that says
/// so (not a bare "Operation canceled") instead of waiting for ever;
/// dropping it afterwards is harmless.
#[test]
fn asyncfd_outliving_its_runtime_reports_an_error() {
    let runtime = rt::Runtime::new().unwrap();
    let (a, b) = unix_stream_pair();
    let fd = runtime.block_on(async { AsyncFd::new(a).unwrap() });
    drop(runtime);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match fd.poll_read_ready(&mut cx) {
        std::task::Poll::Ready(Err(e)) => {
            assert!(e.to_string().contains("runtime is gone"), "unclear: {e}")
        }
        other => panic!("expected an error, got {:?}", other.map(|r| r.map(|_| ()))),
    }
    drop(fd);
    // The poll let go of the file: the peer sees the close.
    let mut buf = [0u8; 1];
    assert_eq!((&b).read(&mut buf).unwrap(), 0);
}

/// A poll-style stream over `AsyncFd`, the bridge to crates written against
/// `AsyncRead`/`AsyncWrite` (traps.md, monoio's `poll-io`): here tokio's
/// traits and its `BufReader`, driven by ringloop's executor.
struct PollStream(AsyncFd<UnixStream>);

impl tokio::io::AsyncRead for PollStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            if let Ok(r) = guard.try_io(|mut s| s.read(unfilled)) {
                return std::task::Poll::Ready(r.map(|n| buf.advance(n)));
            }
        }
    }
}

impl tokio::io::AsyncWrite for PollStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_write_ready(cx))?;
            if let Ok(r) = guard.try_io(|mut s| s.write(data)) {
                return std::task::Poll::Ready(r);
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(self.0.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

/// `poll_read_ready`/`poll_write_ready` drive poll-style I/O: 50 000 lines
/// through tokio's `write_all` and `BufReader::lines`, in order, with a
/// full socket buffer on the way (590 KB, more than a Unix socket holds).
#[test]
fn asyncfd_drives_poll_style_io() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    rt::block_on(async {
        let (a, b) = unix_stream_pair();
        let mut w = PollStream(AsyncFd::new(a).unwrap());
        let r = PollStream(AsyncFd::new(b).unwrap());
        let writer = rt::spawn(async move {
            for i in 0..50_000 {
                w.write_all(format!("line {i}\n").as_bytes()).await.unwrap();
            }
            w.shutdown().await.unwrap();
        });
        let mut lines = BufReader::new(r).lines();
        let mut n = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            assert_eq!(line, format!("line {n}"));
            n += 1;
        }
        assert_eq!(n, 50_000);
        writer.await.unwrap();
    });
}

/// A readiness wake through a waker that is not the runtime's (here a
/// combinator's own, which calls into the loop when woken) is deferred until
/// the loop's state is free: the runtime's wakers are woken as completions
/// are reaped, every other waker only after.
#[test]
fn asyncfd_wakes_a_foreign_waker_outside_the_loop() {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    thread_local! {
        static HANDLE: std::cell::RefCell<Option<ringloop::Handle>> = const { std::cell::RefCell::new(None) };
    }
    /// Forwards to the task's waker; counts the wakes that could call into
    /// the loop (`Handle::stats` fails with `Nested` while its state is
    /// borrowed) and those that could not.
    struct Forward {
        task: Waker,
        free: AtomicUsize,
        nested: AtomicUsize,
    }
    impl Wake for Forward {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let free = HANDLE.with(|h| h.borrow().as_ref().is_some_and(|h| h.stats().is_ok()));
            let counter = if free { &self.free } else { &self.nested };
            counter.fetch_add(1, Ordering::SeqCst);
            self.task.wake_by_ref();
        }
    }
    struct ViaForward<F> {
        inner: Pin<Box<F>>,
        forward: Option<Arc<Forward>>,
    }
    impl<F: Future> Future for ViaForward<F> {
        type Output = (F::Output, Arc<Forward>);
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let forward = self
                .forward
                .get_or_insert_with(|| {
                    Arc::new(Forward {
                        task: cx.waker().clone(),
                        free: AtomicUsize::new(0),
                        nested: AtomicUsize::new(0),
                    })
                })
                .clone();
            let waker = Waker::from(forward.clone());
            match self.inner.as_mut().poll(&mut Context::from_waker(&waker)) {
                Poll::Ready(v) => Poll::Ready((v, forward)),
                Poll::Pending => Poll::Pending,
            }
        }
    }

    let runtime = rt::Runtime::new().unwrap();
    HANDLE.with(|h| *h.borrow_mut() = Some(runtime.handle()));
    runtime.block_on(async {
        let (a, mut b) = unix_stream_pair();
        let fd = AsyncFd::new(a).unwrap();
        let writer = rt::spawn(async move {
            time::sleep(Duration::from_millis(10)).await;
            b.write_all(b"x").unwrap();
            b
        });
        let reader = ViaForward {
            inner: Box::pin(async {
                let mut buf = [0u8; 4];
                read_some(&fd, &mut buf).await
            }),
            forward: None,
        };
        let (n, forward) = time::timeout(Duration::from_secs(20), reader)
            .await
            .expect("the foreign waker was woken");
        assert_eq!(n.unwrap(), 1);
        assert!(forward.free.load(Ordering::SeqCst) >= 1, "woken");
        assert_eq!(
            forward.nested.load(Ordering::SeqCst),
            0,
            "woken while the loop's state was borrowed"
        );
        drop(writer.await.unwrap());
    });
    HANDLE.with(|h| h.borrow_mut().take());
}

/// Any number of tasks may await the same `AsyncFd` at once, in both modes:
/// each is woken when the fd becomes ready (a single waker slot lost all
/// but the last, which left the others waiting for ever; SEMANTICS.md §8).
/// Found by an audit probe.
#[test]
fn asyncfd_wakes_every_task_waiting_on_it() {
    use std::rc::Rc;
    for multishot in [true, false] {
        let runtime = rt::Runtime::new().unwrap();
        runtime.block_on(async {
            let (a, mut b) = unix_stream_pair();
            let fd = Rc::new(AsyncFd::with_mode(a, multishot).unwrap());
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let fd = fd.clone();
                    rt::spawn(async move { fd.readable().await.map(|g| g.ready().is_readable()) })
                })
                .collect();
            // Every waiter has registered before the data arrives.
            for _ in 0..5 {
                rt::yield_now().await;
            }
            b.write_all(b"x").unwrap();
            for (i, w) in waiters.into_iter().enumerate() {
                let woke = time::timeout(Duration::from_secs(20), w).await;
                assert!(
                    matches!(woke, Ok(Ok(Ok(true)))),
                    "waiter {i} (multishot={multishot}) was not woken"
                );
            }
        });
    }
}

/// The clear_ready race (what tokio's readiness ticks are for): a guard
/// clears only the readiness it was made from. Here the reader drains the
/// socket, then awaits something else with the guard in hand; new data
/// arrives and its wake-up is reaped meanwhile. Clearing afterwards must
/// not forget that wake-up, or the reader waits for ever on a socket that
/// holds data (the poll is edge-like: it says nothing until the next write).
#[test]
fn asyncfd_clear_ready_keeps_readiness_that_arrived_after_the_guard() {
    let runtime = rt::Runtime::new().unwrap();
    runtime.block_on(async {
        let (a, mut b) = unix_stream_pair();
        let fd = AsyncFd::new(a).unwrap();
        b.write_all(b"1").unwrap();
        let mut buf = [0u8; 8];
        let mut guard = fd.readable().await.unwrap();
        assert_eq!(guard.get_inner().read(&mut buf).unwrap(), 1);
        // The socket is empty now; more data comes while the task is away.
        b.write_all(b"2").unwrap();
        time::sleep(Duration::from_millis(20)).await;
        guard.clear_ready();
        let again = time::timeout(Duration::from_secs(2), fd.readable()).await;
        let mut guard = again
            .expect("readiness that arrived after the guard was made was cleared")
            .unwrap();
        let n = guard.try_io(|mut s| s.read(&mut buf)).unwrap().unwrap();
        assert_eq!(&buf[..n], b"2");
    });
}

/// Many fds whose polls a CQ overflow keeps ending: every fd is ready (its
/// data is left unread), so each poll armed again posts at once, and with
/// 512 fds through an 8-entry completion queue most of those posts overflow
/// again, ending the poll again, round after round. That is not an fd the
/// kernel cannot poll: none of them may fail (with `EPERM`, say).
#[test]
fn asyncfd_polls_ended_by_overflow_again_and_again_do_not_fail() {
    const N: usize = 512;
    let runtime = runtime_with_tiny_cq();
    let h = runtime.handle();
    runtime.block_on(async {
        let (readers, mut writers): (Vec<_>, Vec<_>) = (0..N).map(|_| unix_stream_pair()).unzip();
        for w in &mut writers {
            w.write_all(b"x").unwrap();
        }
        let before = h.stats().unwrap();
        let fds: Vec<AsyncFd<UnixStream>> = readers
            .into_iter()
            .map(|a| AsyncFd::new(a).unwrap())
            .collect();
        // Let the loop go round: the re-armed polls post, overflow, end.
        for _ in 0..40 {
            rt::yield_now().await;
        }
        time::sleep(Duration::from_millis(50)).await;
        let after = h.stats().unwrap();
        assert!(
            after.overflow_flushes > before.overflow_flushes,
            "the completion queue never overflowed: the test tests nothing"
        );
        for (i, fd) in fds.iter().enumerate() {
            let r = time::timeout(Duration::from_secs(3), fd.readable())
                .await
                .expect("an AsyncFd went deaf after CQ overflows");
            if let Err(e) = r {
                panic!("fd {i} of {N} failed after CQ overflows: {e}");
            }
        }
    });
}

/// An `AsyncFd` awaited on a runtime other than the one it was registered
/// with, while that one is alive: its readiness reaches the other loop,
/// which nothing runs, so the wait must fail with a clear error instead of
/// hanging (as a stream's multishot receive does).
#[test]
fn asyncfd_awaited_on_another_runtime_errors_instead_of_hanging() {
    let first = rt::Runtime::new().unwrap();
    let (a, mut b) = unix_stream_pair();
    let fd = first.block_on(async { AsyncFd::new(a).unwrap() });
    b.write_all(b"x").unwrap();
    let second = rt::Runtime::new().unwrap();
    second.block_on(async {
        let r = time::timeout(Duration::from_secs(2), fd.readable())
            .await
            .expect("an AsyncFd awaited on another runtime hung");
        let e = r.expect_err("its loop is not running");
        assert!(e.to_string().contains("another runtime"), "{e}");
    });
    // On its own runtime it works.
    drop(second);
    first.block_on(async {
        let r = time::timeout(Duration::from_secs(2), fd.readable()).await;
        assert!(matches!(r, Ok(Ok(_))), "not readable on its own runtime");
    });
}

/// Dropping thousands of `AsyncFd`s one after another (a server shutting
/// down its connections) is linear: each drop settles its poll's cancel,
/// and the completions earlier drops kept aside for the next reap were
/// looked through again by every later one (5000 drops took 5.4 s in a
/// debug build, against 0.16 s). Every peer still sees EOF at once.
#[test]
fn dropping_thousands_of_asyncfds_one_by_one_is_linear() {
    const N: usize = 5000;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let need = (2 * N + 200) as libc::rlim_t;
    if lim.rlim_cur < need && lim.rlim_max >= need {
        lim.rlim_cur = need;
        // SAFETY: `lim` is a valid rlimit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
    if lim.rlim_cur < need {
        eprintln!("skipped: RLIMIT_NOFILE {} < {need}", lim.rlim_cur);
        return;
    }
    let runtime = rt::Runtime::new().unwrap();
    let (fds, peers): (Vec<_>, Vec<_>) = (0..N).map(|_| unix_stream_pair()).unzip();
    runtime.block_on(async {
        let fds: Vec<AsyncFd<UnixStream>> =
            fds.into_iter().map(|a| AsyncFd::new(a).unwrap()).collect();
        // Every poll is armed.
        time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        drop(fds);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(2500),
            "dropping {N} AsyncFds took {took:?}"
        );
        for (i, p) in peers.iter().enumerate() {
            let mut buf = [0u8; 1];
            match (&*p).read(&mut buf) {
                Ok(0) => {}
                other => panic!("peer {i} does not see EOF: {other:?}"),
            }
        }
    });
}

/// tokio-rs/tokio#4549 (traps.md): a socket registered before it connects
/// reports a hang-up at first (an unconnected stream socket polls as
/// `POLLHUP`). Once connected, a read that would block proves that side is
/// open: `try_io` must clear the closed state too, or `readable()` returns
/// at once for ever and the reader spins on `WouldBlock`.
#[test]
fn asyncfd_registered_before_connect_does_not_spin_once_connected() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    // SAFETY: plain socket creation; the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    assert!(raw >= 0);
    // SAFETY: `raw` was just created and nothing else owns it.
    let sock = std::net::TcpStream::from(unsafe { OwnedFd::from_raw_fd(raw) });
    rt::block_on(async {
        let fd = AsyncFd::new(sock).unwrap();
        // Let the loop see the unconnected socket's hang-up.
        time::sleep(Duration::from_millis(10)).await;
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(addr.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `sin` is a valid sockaddr_in of the size given.
        let rc = unsafe {
            libc::connect(
                raw,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let e = io::Error::last_os_error();
        assert!(
            rc == 0 || e.raw_os_error() == Some(libc::EINPROGRESS),
            "{e}"
        );
        let (mut peer, _) = listener.accept().unwrap();
        // Connected; nothing to read yet. A reader must wait, not spin.
        let tries = std::cell::Cell::new(0u32);
        let mut buf = [0u8; 8];
        let read = async {
            loop {
                let mut g = fd.readable().await.unwrap();
                if let Ok(r) = g.try_io(|mut s| {
                    tries.set(tries.get() + 1);
                    if tries.get() > 100 {
                        // It never returns Pending: stop the spin here.
                        return Err(io::Error::other("readable() spins"));
                    }
                    s.read(&mut buf)
                }) {
                    return r;
                }
            }
        };
        let idle = time::timeout(Duration::from_millis(200), read).await;
        assert!(idle.is_err(), "read {idle:?} with nothing sent");
        assert!(
            tries.get() < 10,
            "{} reads that would block in 200 ms: readable() spins",
            tries.get()
        );
        peer.write_all(b"hi").unwrap();
        let n = time::timeout(Duration::from_secs(2), read_some_tcp(&fd, &mut buf))
            .await
            .expect("the data never woke the reader")
            .unwrap();
        assert_eq!(&buf[..n], b"hi");
        // A real hang-up is still seen (and stays).
        drop(peer);
        let n = time::timeout(Duration::from_secs(2), read_some_tcp(&fd, &mut buf))
            .await
            .expect("the hang-up never woke the reader")
            .unwrap();
        assert_eq!(n, 0);
        // (The read may have seen the end before the loop reaped its poll.)
        time::sleep(Duration::from_millis(20)).await;
        let g = fd.readable().await.unwrap();
        assert!(g.ready().is_read_closed(), "{:?}", g.ready());
    });
}

async fn read_some_tcp(fd: &AsyncFd<std::net::TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        if let Ok(r) = guard.try_io(|mut s| s.read(buf)) {
            return r;
        }
    }
}

/// Counts the live wakers made by [`Tracked`]: one is alive while anything
/// (a wait's list of waiters, a timer) still holds a clone of it.
struct Tracker {
    inner: std::task::Waker,
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl std::task::Wake for Tracker {
    fn wake(self: std::sync::Arc<Self>) {
        self.inner.wake_by_ref();
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Polls `F` with a waker that forwards to the task's and is counted in
/// `live` until the last clone of it is dropped.
struct Tracked<F> {
    inner: std::pin::Pin<Box<F>>,
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<F: std::future::Future> std::future::Future for Tracked<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let waker = std::task::Waker::from(std::sync::Arc::new(Tracker {
            inner: cx.waker().clone(),
            live: self.live.clone(),
        }));
        self.inner
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
    }
}

/// A wait dropped before its readiness arrives (a timeout, a `select`, an
/// aborted task) takes its waker out of the fd's waiters: 10 000 tasks
/// that each give up waiting on an idle fd leave none behind (each would
/// keep its task's header alive, and the list would grow for ever).
/// Waits still pending are woken as before, each once.
#[test]
fn asyncfd_dropped_waits_leave_no_waker_behind() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const TASKS: usize = 10_000;
    for multishot in [true, false] {
        rt::block_on(async {
            let (a, mut b) = unix_stream_pair();
            let fd = std::rc::Rc::new(AsyncFd::with_mode(a, multishot).unwrap());
            let live = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let (fd, live) = (fd.clone(), live.clone());
                    rt::spawn(Tracked {
                        inner: Box::pin(async move {
                            let waited =
                                time::timeout(Duration::from_millis(1), fd.readable()).await;
                            assert!(waited.is_err(), "nothing to read");
                        }),
                        live,
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            // The fd remembers the last waker it checked for its runtime: a
            // wait of this task's replaces it.
            let mine = time::timeout(Duration::from_millis(1), fd.readable()).await;
            assert!(mine.is_err());
            assert_eq!(
                live.load(Ordering::Relaxed),
                0,
                "multishot={multishot}: wakers of dropped waits are still held"
            );
            // Waits pending when readiness arrives are each woken.
            let woken = std::rc::Rc::new(std::cell::Cell::new(0));
            let waits: Vec<_> = (0..3)
                .map(|_| {
                    let (fd, woken) = (fd.clone(), woken.clone());
                    rt::spawn(async move {
                        let g = time::timeout(Duration::from_secs(10), fd.readable()).await;
                        assert!(g.unwrap().unwrap().ready().is_readable());
                        woken.set(woken.get() + 1);
                    })
                })
                .collect();
            // One of them gives up first, before the readiness.
            let quitter = time::timeout(Duration::from_millis(1), fd.readable()).await;
            assert!(quitter.is_err());
            b.write_all(b"x").unwrap();
            for w in waits {
                w.await.unwrap();
            }
            assert_eq!(woken.get(), 3);
        });
    }
}

/// In watch mode a wait's interest keeps the reactor's poll armed and the
/// loop busy (`has_events`): a wait dropped unfinished gives its interest
/// back, so an idle, unwaited fd has no poll in flight.
#[test]
fn asyncfd_dropped_wait_disarms_a_watch() {
    let runtime = rt::Runtime::new().unwrap();
    let h = runtime.handle();
    runtime.block_on(async {
        let (a, _b) = unix_stream_pair();
        let fd = AsyncFd::with_mode(a, false).unwrap();
        time::sleep(Duration::from_millis(1)).await;
        let before = h.stats().unwrap().in_flight;
        let waited = time::timeout(Duration::from_millis(5), fd.readable()).await;
        assert!(waited.is_err(), "nothing to read yet");
        // Time for the cancelled poll's completion.
        time::sleep(Duration::from_millis(5)).await;
        let after = h.stats().unwrap().in_flight;
        assert_eq!(after, before, "the dropped wait's poll is still armed");
    });
}
