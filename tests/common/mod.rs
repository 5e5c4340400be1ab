//! Helpers shared by the integration tests: fd pairs, fd counting and a real
//! non-blocking peer-EOF check.
#![allow(dead_code)]

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use ringloop::{EventLoop, WaitTimeout};

/// A shared log that handlers push to.
pub type Log<T> = Rc<RefCell<Vec<T>>>;

/// A new empty log.
pub fn log<T>() -> Log<T> {
    Rc::new(RefCell::new(Vec::new()))
}

/// An AF_UNIX stream socket pair, both ends non-blocking and close-on-exec.
pub fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// An AF_UNIX stream pair as std `UnixStream`s, both ends non-blocking.
pub fn unix_stream_pair() -> (
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// A pipe `(reader, writer)`, both ends non-blocking and close-on-exec.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A connected TCP loopback pair `(client, server side)`, both non-blocking.
pub fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.set_nonblocking(true).unwrap();
    server.set_nonblocking(true).unwrap();
    (client, server)
}

/// Number of open fds of this process (entries of /proc/self/fd, minus the
/// one the listing itself uses).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count() - 1
}

/// `write(2)`; returns bytes written or the error.
pub fn write_fd(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: reads `data.len()` bytes from a live slice.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `read(2)` into a fresh buffer of `max` bytes.
pub fn read_fd(fd: RawFd, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    // SAFETY: writes at most `max` bytes into a live buffer of that size.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), max) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Non-blocking `recv(2)` with `MSG_DONTWAIT`.
pub fn recv_now(fd: RawFd, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    // SAFETY: writes at most `max` bytes into a live buffer of that size.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), max, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Whether the peer of socket `fd` has closed: a non-blocking recv returns 0
/// (EOF) or ECONNRESET right now. Data still queued is drained first.
pub fn peer_closed(fd: RawFd) -> bool {
    loop {
        match recv_now(fd, 4096) {
            Ok(b) if b.is_empty() => return true,
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return true,
            Err(_) => return false,
        }
    }
}

/// `shutdown(fd, how)`.
pub fn shutdown(fd: &impl AsRawFd, how: i32) {
    // SAFETY: plain syscall on a live fd.
    let rc = unsafe { libc::shutdown(fd.as_raw_fd(), how) };
    assert_eq!(rc, 0, "shutdown: {}", io::Error::last_os_error());
}

/// Fills the socket's send buffer until write reports EAGAIN; returns bytes written.
pub fn fill(fd: RawFd) -> usize {
    let chunk = [0u8; 65536];
    let mut total = 0;
    loop {
        match write_fd(fd, &chunk) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("fill: {e}"),
        }
    }
}

/// Shrinks a socket's send buffer (to make "full" cheap to reach).
pub fn small_sndbuf(fd: RawFd) {
    let size: libc::c_int = 4096;
    // SAFETY: passes a live c_int of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
}

/// Polls `fut` once in a task of `rt`, expecting it to stay pending there:
/// a future bound to `rt`'s loop, for a test that then awaits it elsewhere.
pub fn poll_once_on<F: Future + Unpin>(rt: &ringloop::rt::Runtime, fut: &mut F) {
    let pending = rt.block_on(std::future::poll_fn(|cx| {
        Poll::Ready(Pin::new(&mut *fut).poll(cx).is_pending())
    }));
    assert!(pending, "pending on its own runtime");
}

/// A loop that never blocks: an iteration in which nothing ran is `WouldBlock`.
pub fn nonblocking_loop() -> EventLoop {
    EventLoop::builder()
        .wait_timeout(WaitTimeout::Never)
        .build()
        .unwrap()
}

/// A loop whose idle iterations block at most `d`.
pub fn loop_with_timeout(d: Duration) -> EventLoop {
    EventLoop::builder()
        .wait_timeout(WaitTimeout::After(d))
        .build()
        .unwrap()
}

/// Runs up to `n` iterations of a loop with a short wait timeout, stopping
/// early at `WouldBlock`.
pub fn spin(lp: &EventLoop, n: usize) {
    for _ in 0..n {
        match lp.run_once() {
            Ok(()) => {}
            Err(ringloop::Error::WouldBlock) => return,
            Err(e) => panic!("run_once: {e}"),
        }
    }
}

/// Runs iterations until `cond` holds, failing after `limit` iterations.
pub fn run_until(lp: &EventLoop, limit: usize, mut cond: impl FnMut() -> bool) {
    for _ in 0..limit {
        if cond() {
            return;
        }
        match lp.run_once() {
            Ok(()) | Err(ringloop::Error::WouldBlock) => {}
            Err(e) => panic!("run_once: {e}"),
        }
    }
    assert!(cond(), "condition not reached after {limit} iterations");
}

/// The calling thread's kernel id.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Sends `sig` to this very thread (so the harness's other threads cannot take it).
pub fn signal_this_thread(sig: i32) {
    // SAFETY: tgkill to our own pid and tid.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), gettid(), sig) };
    assert_eq!(rc, 0, "tgkill: {}", io::Error::last_os_error());
}

/// Waits for a forked child and returns its exit code (or 128 + signal).
pub fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a live int.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    }
}

/// A blocking pipe `(reader, writer)`: io_uring reads on it wait for data
/// instead of failing with EAGAIN.
pub fn blocking_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}
