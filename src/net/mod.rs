//! Sockets whose I/O goes through io_uring operations: [`TcpListener`],
//! [`TcpStream`], [`UnixStream`] and [`UdpSocket`].
//!
//! These are completion-based, not readiness-based: `accept`, `connect`,
//! `read`, `write`, `send_to` and `recv_from` each submit one io_uring
//! operation and await its completion, so a busy connection costs no poll
//! round trip and no syscall of its own (the operations of all tasks go to
//! the kernel together when the loop next enters it).
//!
//! Buffers are passed by value and handed back with the result, the
//! `(result, buf)` pattern: the operation owns the buffer while the kernel
//! may touch it. Reads fill a `Vec`'s **spare capacity** (`len..capacity`)
//! and extend its length; writes send its contents (`..len`).
//!
//! A stream that carries many small messages can serve its reads from one
//! multishot receive instead ([`TcpStream::enable_multishot_recv`],
//! [`UnixStream::enable_multishot_recv`]): the kernel receives into a pool of
//! buffers the loop registered, whenever data arrives, and a read copies
//! what is there, so it submits nothing and arms no poll.
//!
//! One exception to "one operation each": a stream's `write` or
//! `write_all` on a loop that is serving one completion per
//! `io_uring_enter` (latency-bound, not batching) first sends directly,
//! without blocking, and submits a `SEND` only for what did not fit. A
//! `SEND`'s completion would cost another enter before the loop could wait
//! again, on the path of the reply; when completions come in batches,
//! sends share the enter instead. The choice is a hint the loop updates at
//! each reap ([`crate::reactor`]'s `reaps_singly`). It moved 1-connection
//! echo from 0.97–0.98x tokio's round trip to 1.00–1.03x.
//!
//! Dropping a future mid-operation cancels the operation; the buffer and
//! the socket stay alive until the kernel is done with them, and a socket
//! that an `accept` produced after the cancel is closed. A socket's fd is
//! closed when the socket value and every operation using it are gone.
//!
//! A socket belongs to no loop: each operation is submitted on the loop of
//! the runtime whose task first polls it, so a socket made under one
//! runtime may be used under another of the thread (the first one idle or
//! gone). An operation already in flight on one runtime's loop and then
//! awaited by a task of another, while the first is idle, would never be
//! reaped: it is cancelled there and fails at once with
//! [`io::ErrorKind::Interrupted`], having done nothing (do it again), or
//! returns what it had already done. A connect, whose socket is its own,
//! starts again on the new runtime instead, and finishes a handshake the
//! cancelled attempt had started (see [`TcpStream::connect`]). A stream's
//! multishot receive is armed on one loop at a time (see
//! [`TcpStream::enable_multishot_recv`]).
//!
//! An operation awaited by another executor (`futures::executor::block_on`,
//! a waker that is no runtime task's) while no runtime of the thread runs
//! `block_on` would never be reaped either: it is cancelled on its loop the
//! same way and fails at once with an error that says no runtime runs the
//! wait ([`io::ErrorKind::Other`], not `Interrupted`: awaited there again,
//! it would fail again), or returns what it had already done. A connect
//! fails so too, and a multishot receive's read. Await them inside
//! [`Runtime::block_on`](crate::rt::Runtime::block_on) or one of its tasks;
//! through a combinator's waker there, they wait as usual.
//!
//! A stream read can be dropped (by `time::timeout`, say) without losing
//! data: if the kernel had received bytes for it anyway, the stream keeps
//! them and the next read returns them first, and a new read waits until
//! the dropped one is back from the kernel, so bytes never come out of
//! order (a read dropped under one runtime, now idle, and the next awaited
//! under another: the first runtime's loop is given a kernel turn then, so
//! that the dropped one comes back without waiting for that loop to run).
//! A write cannot be taken back: one dropped after the kernel took
//! its bytes has sent them, and the caller cannot tell how many, so a
//! stream whose write was dropped mid-way should be treated as broken
//! (or written with no timeout around the write itself). A UDP receive
//! dropped as its datagram came loses that datagram.
//!
//! ```
//! use ringloop::{net::{TcpListener, TcpStream}, rt};
//! rt::block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//!     let addr = listener.local_addr().unwrap();
//!     let client = rt::spawn(async move {
//!         let s = TcpStream::connect(addr).await.unwrap();
//!         let (r, _) = s.write_all(b"ping".to_vec()).await;
//!         r.unwrap();
//!         let (r, buf) = s.read(Vec::with_capacity(16)).await;
//!         assert_eq!((r.unwrap(), &buf[..]), (4, &b"pong"[..]));
//!     });
//!     let (s, _peer) = listener.accept().await.unwrap();
//!     let (r, buf) = s.read(Vec::with_capacity(16)).await;
//!     assert_eq!(&buf[..r.unwrap()], b"ping");
//!     s.write_all(b"pong".to_vec()).await.0.unwrap();
//!     client.await.unwrap();
//! });
//! ```

mod addr;
mod multishot;
mod tcp;
mod udp;
mod unix;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker, ready};

use io_uring::{opcode, types};

use crate::op::{Op, Orphan};
use crate::reactor::{Completion, Handle};

pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::UnixStream;

pub(crate) use addr::SockAddr;
pub(crate) use multishot::StreamRx;

/// An fd shared by a socket value and its in-flight operations, so it is
/// closed only when all of them are done with it (an operation submitted
/// after a close would act on whatever file reuses the number).
#[derive(Clone)]
pub(crate) struct Socket(Rc<SocketInner>);

struct SocketInner {
    fd: OwnedFd,
    /// After a short read, the next receive waits for readiness first
    /// (`IORING_RECVSEND_POLL_FIRST`) instead of making an attempt that
    /// fails with EAGAIN before the kernel arms the same wait. Only for
    /// Unix stream sockets: there the failed attempt is pure waste (+8%
    /// on pipe_bench's ring-native futures variant), while on TCP it also
    /// lets the stack act on the empty queue at once, and skipping it made
    /// a 1-connection echo round trip about 3% slower.
    poll_first_when_drained: bool,
    /// The last receive came back short of its buffer, so the socket is
    /// probably empty. A wrong guess costs little: a poll that finds data
    /// completes at once.
    drained: Cell<bool>,
    /// What receives whose futures were dropped (by a timeout, say) got
    /// from the kernel anyway: the next reads return it before anything
    /// new, so cancelling a read loses no data (monoio#318).
    salvaged: RefCell<Salvaged>,
    /// `salvaged` is not empty: the one thing a read looks at (a `Cell`,
    /// not a borrow) while no read was ever dropped unfinished.
    salvage_active: Cell<bool>,
}

/// Bytes, then an error, that dropped receives brought in, in order, and
/// the reads that wait for a dropped receive the kernel still has.
#[derive(Default)]
struct Salvaged {
    bytes: Vec<u8>,
    /// An errno after the bytes (an error is reported once, so it must
    /// not be lost either).
    error: Option<i32>,
    /// Dropped receives whose final completion has not come back. While
    /// there is one, no new receive starts: it could take bytes that came
    /// after the ones the dropped receive still brings (on a ring without
    /// `DEFER_TASKRUN` that completion can be in the CQ, unreaped, while
    /// the next receive is already submitted).
    in_kernel: u32,
    /// The loops those receives are in (usually one; emptied when
    /// `in_kernel` reaches 0): a read under another runtime settles them
    /// there (see [`Socket::wait_for_dropped_recv`]).
    in_loops: Vec<Handle>,
    /// Reads waiting for `in_kernel` to reach 0.
    waiters: Vec<Waker>,
}

impl Salvaged {
    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.error.is_none() && self.in_kernel == 0
    }
}

/// `IORING_RECVSEND_POLL_FIRST` (Linux 5.19), in the SQE's `ioprio` field.
const RECVSEND_POLL_FIRST: u16 = 1;

impl Socket {
    pub(crate) fn from_fd(fd: OwnedFd) -> Socket {
        Socket::with_hint(fd, false)
    }

    /// A Unix stream socket: receives use the drained hint (see `SocketInner`).
    pub(crate) fn unix_stream(fd: OwnedFd) -> Socket {
        Socket::with_hint(fd, true)
    }

    fn with_hint(fd: OwnedFd, poll_first_when_drained: bool) -> Socket {
        Socket(Rc::new(SocketInner {
            fd,
            poll_first_when_drained,
            drained: Cell::new(false),
            salvaged: RefCell::default(),
            salvage_active: Cell::new(false),
        }))
    }

    /// A new socket (blocking mode: io_uring never blocks on it, and
    /// `IORING_OP_CONNECT` behaves the same on every kernel).
    pub(crate) fn new(domain: i32, ty: i32) -> io::Result<Socket> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Socket::with_hint(
            fd,
            domain == libc::AF_UNIX && ty == libc::SOCK_STREAM,
        ))
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.fd.as_raw_fd()
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.raw())
    }

    /// Moves what dropped receives salvaged into `buf`'s spare capacity
    /// (which must not be empty): `Some(bytes copied)`, or the error they
    /// saw once the bytes are used up; `None` if there is nothing.
    #[inline]
    pub(crate) fn take_salvaged(&self, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
        if !self.0.salvage_active.get() {
            return None;
        }
        self.take_salvaged_now(buf)
    }

    #[cold]
    fn take_salvaged_now(&self, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
        let mut salvaged = self.0.salvaged.borrow_mut();
        let taken = if !salvaged.bytes.is_empty() {
            let n = salvaged.bytes.len().min(buf.capacity() - buf.len());
            buf.extend_from_slice(&salvaged.bytes[..n]);
            salvaged.bytes.drain(..n);
            Some(Ok(n))
        } else {
            salvaged
                .error
                .take()
                .map(|e| Err(io::Error::from_raw_os_error(e)))
        };
        self.0.salvage_active.set(!salvaged.is_empty());
        taken
    }

    /// A receive is being dropped unfinished: until the kernel hands it
    /// back ([`Socket::salvage_recv`]), new receives wait.
    fn recv_dropped_in_flight(&self, handle: &Handle) {
        let mut salvaged = self.0.salvaged.borrow_mut();
        salvaged.in_kernel += 1;
        if !salvaged.in_loops.iter().any(|h| h.same_loop(handle)) {
            salvaged.in_loops.push(handle.clone());
        }
        drop(salvaged);
        self.0.salvage_active.set(true);
    }

    /// Whether a read must wait before it receives: a dropped receive is
    /// still in the kernel (see `Salvaged::in_kernel`). If so, `waker` is
    /// woken when it is back. Outside a runtime nothing will bring it back,
    /// so nothing waits (the read then fails as every operation does there).
    #[inline]
    pub(crate) fn must_wait_for_dropped_recv(&self, waker: &Waker) -> bool {
        self.0.salvage_active.get() && self.wait_for_dropped_recv(waker)
    }

    /// The slow part of [`Socket::must_wait_for_dropped_recv`].
    ///
    /// A dropped receive in the loop of another runtime, alive but idle (a
    /// read timed out under one runtime, the next is awaited under
    /// another), or of any loop while another executor awaits the read
    /// with no runtime running, would never come back while this read
    /// waits: that loop's kernel gets a turn now, which brings the
    /// cancelled receive back (with whatever it got, kept for this read).
    /// (The read's own receive then fails there as any operation does.)
    #[cold]
    fn wait_for_dropped_recv(&self, waker: &Waker) -> bool {
        if !crate::rt::in_runtime() {
            return false;
        }
        let idle: Vec<Handle> = {
            let salvaged = self.0.salvaged.borrow();
            if salvaged.in_kernel == 0 {
                return false;
            }
            salvaged
                .in_loops
                .iter()
                .filter(|h| {
                    !matches!(
                        crate::rt::polled_by_live(h, waker),
                        crate::rt::PolledBy::ItsRuntime
                    )
                })
                .cloned()
                .collect()
        };
        // Outside the borrow: the turn runs the receives' salvage.
        for h in &idle {
            let _ = h.turn_kernel_now();
        }
        let mut salvaged = self.0.salvaged.borrow_mut();
        if salvaged.in_kernel == 0 {
            return false;
        }
        if !idle.is_empty() {
            // The kernel has not given it back yet: look again after this
            // runtime's next turn, as no wake would come from that loop.
            waker.wake_by_ref();
            return true;
        }
        if !salvaged.waiters.iter().any(|w| w.will_wake(waker)) {
            salvaged.waiters.push(waker.clone());
        }
        true
    }

    /// The fate of a receive whose future was dropped: what the kernel
    /// received into its buffer anyway is kept for the next read.
    fn salvage_recv(c: Completion, (mut buf, sock): (Vec<u8>, Socket)) {
        let start = buf.len();
        let mut salvaged = sock.0.salvaged.borrow_mut();
        salvaged.in_kernel = salvaged.in_kernel.saturating_sub(1);
        let waiters = if salvaged.in_kernel == 0 {
            salvaged.in_loops.clear();
            std::mem::take(&mut salvaged.waiters)
        } else {
            Vec::new()
        };
        match c.result {
            n if n > 0 => {
                extend(&mut buf, n as u32);
                salvaged.bytes.extend_from_slice(&buf[start..]);
            }
            // End of stream is seen again by the next receive; a cancelled
            // receive received nothing.
            0 => {}
            e if e == -libc::ECANCELED || e == -libc::EINTR => {}
            e => {
                salvaged.error.get_or_insert(-e);
            }
        }
        sock.0.salvage_active.set(!salvaged.is_empty());
        drop(salvaged);
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Receives into `buf`'s spare capacity (after what dropped receives
    /// salvaged, see [`Socket::take_salvaged`]).
    pub(crate) fn recv(&self, buf: Vec<u8>) -> RecvFuture {
        let spare = buf.capacity() - buf.len();
        if spare == 0 {
            return RecvFuture::Done(Some((Err(no_spare_capacity()), buf)));
        }
        // Anything salvaged, or a dropped receive still in the kernel: the
        // first poll sorts it out (`RecvFuture::poll_waiting`).
        if self.0.salvage_active.get() {
            return RecvFuture::Waiting {
                sock: self.clone(),
                buf: Some(buf),
            };
        }
        self.start_recv(buf)
    }

    /// [`Socket::recv`] once no dropped receive is in the kernel: the
    /// salvaged bytes, or a `RECV` (`buf` has spare capacity).
    #[inline]
    fn start_recv(&self, mut buf: Vec<u8>) -> RecvFuture {
        if let Some(r) = self.take_salvaged(&mut buf) {
            return RecvFuture::Done(Some((r, buf)));
        }
        let len = u32::try_from(buf.capacity() - buf.len()).unwrap_or(u32::MAX);
        // SAFETY: `len` bytes past `buf.len()` are allocated.
        let ptr = unsafe { buf.as_mut_ptr().add(buf.len()) };
        let ioprio = if self.0.poll_first_when_drained && self.0.drained.get() {
            RECVSEND_POLL_FIRST
        } else {
            0
        };
        let entry = opcode::Recv::new(self.fd(), ptr, len)
            .ioprio(ioprio)
            .build();
        // SAFETY: the Vec's heap buffer and the fd are owned by the operation.
        let op = unsafe { Op::submit(entry, (buf, self.clone()), Orphan::Drop) }
            .salvage_with(Socket::salvage_recv);
        RecvFuture::InFlight { op, len }
    }

    /// Sends what it can of `buf` at once, without an operation, if the
    /// loop serves one completion per `io_uring_enter` (a latency-bound
    /// loop: a `SEND` would cost another enter for its completion before
    /// the loop could wait again, on the path of the reply). `None` if it
    /// did not try or the socket is full: send through the ring then.
    fn try_send_now(&self, buf: &[u8]) -> Option<io::Result<usize>> {
        // Outside a runtime the operation reports that, as every other
        // one does.
        if buf.is_empty() || !crate::reactor::reaps_singly() || !crate::rt::in_runtime() {
            return None;
        }
        // SAFETY: a non-blocking send from a live buffer of `buf.len()` bytes.
        let n = unsafe {
            libc::send(
                self.0.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(n) => Some(Ok(n)),
            Err(_) => match io::Error::last_os_error() {
                e if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
                {
                    None
                }
                e => Some(Err(e)),
            },
        }
    }

    /// Sends `buf[..len]` once (directly if that is cheaper, see
    /// [`Socket::try_send_now`]); returns how much went out.
    pub(crate) async fn write(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self.try_send_now(&buf) {
            Some(r) => (r, buf),
            None => self.send(buf).await,
        }
    }

    /// Sends `buf[..len]` once; returns how much went out.
    pub(crate) fn send(&self, buf: Vec<u8>) -> SendFuture {
        self.send_from(buf, 0)
    }

    fn send_from(&self, buf: Vec<u8>, from: usize) -> SendFuture {
        let rest = &buf[from.min(buf.len())..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(self.fd(), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: as in `recv`.
        SendFuture(unsafe { Op::submit(entry, (buf, self.clone()), Orphan::Drop) })
    }

    /// Sends all of `buf[..len]`. Like an `async fn`, the future does
    /// nothing until first polled.
    pub(crate) fn send_all(&self, buf: Vec<u8>) -> SendAllFuture<'_> {
        SendAllFuture {
            sock: self,
            sent: 0,
            state: SendAll::Idle(Some(buf)),
        }
    }

    /// Connects through `IORING_OP_CONNECT`.
    ///
    /// A connect in flight on an idle runtime's loop and awaited by a task
    /// of another is cancelled there ([`crate::op::submit`]) and started
    /// again on this runtime, on the same socket: it is this future's own,
    /// so nobody else could. The cancelled connect may have started the
    /// handshake (sent the SYN), which the kernel goes on with, and a new
    /// connect then fails with `EALREADY`: the connect then waits for the
    /// socket to become writable (the handshake is over) and takes its
    /// pending error, as after a non-blocking `connect(2)`; without one it
    /// asks the kernel again, which says connected (or `EALREADY` after a
    /// spurious wake-up: it waits again).
    pub(crate) async fn connect(&self, addr: SockAddr) -> io::Result<()> {
        let mut addr = Box::new(addr);
        loop {
            let entry = opcode::Connect::new(self.fd(), addr.as_ptr(), addr.len()).build();
            // SAFETY: the boxed address and the fd are owned by the operation.
            let (r, (back, _)) = unsafe { Op::submit(entry, (addr, self.clone()), Orphan::Drop) }
                .result()
                .await;
            addr = back;
            match r {
                // After `EALREADY` and the wait, the kernel says 0 once.
                Ok(_) => return Ok(()),
                // Kernels before the EINPROGRESS fix may retry the connect
                // after it succeeded and report that it already is
                // connected; so does a connect asked again too late.
                Err(e) if e.raw_os_error() == Some(libc::EISCONN) => return Ok(()),
                Err(e) if crate::op::is_moved(&e) => {}
                Err(e) if e.raw_os_error() == Some(libc::EALREADY) => {
                    self.wait_connect_in_progress().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the handshake of a connect in progress is over: the
    /// socket becomes writable, or reports an error (which is taken, and
    /// returned). `Ok` says to ask the kernel again.
    #[cold]
    async fn wait_connect_in_progress(&self) -> io::Result<()> {
        let entry = opcode::PollAdd::new(self.fd(), libc::POLLOUT as u32).build();
        // SAFETY: a poll points at no memory; the operation owns the fd.
        let (r, _) = unsafe { Op::submit(entry, self.clone(), Orphan::Drop) }
            .result()
            .await;
        match r {
            Ok(_) => {}
            // Awaited under another runtime meanwhile: ask again there.
            Err(e) if crate::op::is_moved(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        match self.take_error()? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Takes the socket's pending error (`SO_ERROR`).
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are live and `len` is `err`'s size.
        cvt(unsafe {
            libc::getsockopt(
                self.raw(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
    }

    /// Accepts one connection; the new fd is closed if the future is dropped.
    pub(crate) async fn accept(&self) -> io::Result<(OwnedFd, SockAddr)> {
        let mut addr = Box::new(SockAddr::empty());
        let (ptr, len) = addr.as_mut_ptrs();
        let entry = opcode::Accept::new(self.fd(), ptr, len)
            .flags(libc::SOCK_CLOEXEC)
            .build();
        // SAFETY: the boxed address buffer and the fd are owned by the operation.
        let (r, (addr, _sock)) =
            unsafe { Op::submit(entry, (addr, self.clone()), Orphan::CloseFd) }
                .result()
                .await;
        let fd = r?;
        // SAFETY: the kernel just created this fd for us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok((fd, *addr))
    }

    pub(crate) fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        let how = match how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: plain syscall on an fd we own.
        cvt(unsafe { libc::shutdown(self.raw(), how) }).map(drop)
    }

    pub(crate) fn local_addr(&self) -> io::Result<SockAddr> {
        SockAddr::query(self.raw(), libc::getsockname)
    }

    pub(crate) fn peer_addr(&self) -> io::Result<SockAddr> {
        SockAddr::query(self.raw(), libc::getpeername)
    }

    pub(crate) fn set_int_opt(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: `value` is a live c_int of the size passed.
        cvt(unsafe {
            libc::setsockopt(
                self.raw(),
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.fd.as_fd()
    }

    /// The fd, if no operation is using it.
    pub(crate) fn into_fd(self) -> Result<OwnedFd, Socket> {
        // What dropped receives salvaged would be lost with the value.
        if !self.0.salvaged.borrow().is_empty() {
            return Err(self);
        }
        Rc::try_unwrap(self.0).map(|inner| inner.fd).map_err(Socket)
    }
}

// Receives and sends are named futures rather than `async fn`s: each is
// awaited once per message, and a nested `async fn` state machine would be
// several times the size of the operation it wraps (and moved with it).

/// A receive in flight ([`Socket::recv`]): the bytes read and the buffer.
pub(crate) enum RecvFuture {
    /// Resolved without an operation (no spare capacity, or salvaged bytes).
    Done(Option<(io::Result<usize>, Vec<u8>)>),
    /// Not started: the socket holds salvaged data, or a dropped receive
    /// is still in the kernel.
    Waiting { sock: Socket, buf: Option<Vec<u8>> },
    /// Waiting for the kernel; `len` is the spare capacity offered.
    InFlight { op: Op<(Vec<u8>, Socket)>, len: u32 },
}

impl Drop for RecvFuture {
    fn drop(&mut self) {
        if let RecvFuture::InFlight { op, .. } = self
            && let Some((handle, (_, sock))) = op.in_flight_resources()
        {
            sock.recv_dropped_in_flight(handle);
        }
    }
}

impl Future for RecvFuture {
    type Output = (io::Result<usize>, Vec<u8>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this {
            RecvFuture::InFlight { op, len } => {
                let (r, (mut buf, sock)) = ready!(op.poll_result(cx));
                let r = r.and_then(|c| c.result());
                // A short read (not EOF, not an error) leaves the socket empty.
                sock.0.drained.set(matches!(r, Ok(n) if n > 0 && n < *len));
                Poll::Ready((r.map(|n| extend(&mut buf, n)), buf))
            }
            RecvFuture::Done(out) => {
                Poll::Ready(out.take().expect("RecvFuture polled after completion"))
            }
            RecvFuture::Waiting { .. } => this.poll_waiting(cx),
        }
    }
}

impl RecvFuture {
    /// Starts the receive once no dropped one is left in the kernel.
    #[cold]
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<(io::Result<usize>, Vec<u8>)> {
        let RecvFuture::Waiting { sock, buf } = self else {
            unreachable!("only called while waiting")
        };
        if sock.must_wait_for_dropped_recv(cx.waker()) {
            return Poll::Pending;
        }
        let buf = buf.take().expect("RecvFuture polled after completion");
        *self = sock.clone().start_recv(buf);
        Pin::new(self).poll(cx)
    }
}

/// A send in flight ([`Socket::send`]): how much went out, and the buffer.
pub(crate) struct SendFuture(Op<(Vec<u8>, Socket)>);

impl Future for SendFuture {
    type Output = (io::Result<usize>, Vec<u8>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (r, (buf, _sock)) = ready!(self.get_mut().0.poll_result(cx));
        Poll::Ready((r.and_then(|c| c.result()).map(|n| n as usize), buf))
    }
}

/// Sends until all of a buffer went out ([`Socket::send_all`]).
pub(crate) struct SendAllFuture<'a> {
    sock: &'a Socket,
    /// Bytes of the buffer sent so far.
    sent: usize,
    state: SendAll,
}

enum SendAll {
    /// Not polled yet (or finished: `None`).
    Idle(Option<Vec<u8>>),
    Sending(SendFuture),
}

impl Future for SendAllFuture<'_> {
    type Output = (io::Result<()>, Vec<u8>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let buf = match &mut this.state {
                SendAll::Idle(buf) => {
                    let buf = buf.take().expect("SendAllFuture polled after completion");
                    match this.sock.try_send_now(&buf) {
                        Some(Ok(n)) => this.sent = n,
                        Some(Err(e)) => return Poll::Ready((Err(e), buf)),
                        None => {}
                    }
                    buf
                }
                SendAll::Sending(send) => {
                    let (r, buf) = ready!(Pin::new(send).poll(cx));
                    match r {
                        Ok(0) => return Poll::Ready((Err(io::ErrorKind::WriteZero.into()), buf)),
                        Ok(n) => this.sent += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Poll::Ready((Err(e), buf)),
                    }
                    buf
                }
            };
            if this.sent >= buf.len() {
                this.state = SendAll::Idle(None);
                return Poll::Ready((Ok(()), buf));
            }
            this.state = SendAll::Sending(this.sock.send_from(buf, this.sent));
        }
    }
}

/// Sets `buf`'s length after the kernel wrote `n` bytes into its spare capacity.
pub(crate) fn extend(buf: &mut Vec<u8>, n: u32) -> usize {
    let n = (n as usize).min(buf.capacity() - buf.len());
    // SAFETY: the kernel initialised `n` bytes after the old length, within capacity.
    unsafe { buf.set_len(buf.len() + n) };
    n
}

pub(crate) fn no_spare_capacity() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "the buffer has no spare capacity to read into (reads fill len..capacity)",
    )
}

pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
