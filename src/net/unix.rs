//! Unix-domain stream sockets through io_uring.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::{SockAddr, Socket, StreamRx};

/// A Unix-domain stream socket whose reads and writes are io_uring
/// operations; the same buffer and runtime rules as
/// [`TcpStream`](super::TcpStream).
pub struct UnixStream {
    sock: Socket,
    rx: StreamRx,
}

impl UnixStream {
    /// A connected pair.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((UnixStream::from_std(a), UnixStream::from_std(b)))
    }

    /// Connects to the socket at `path` with `IORING_OP_CONNECT`. In
    /// flight under an idle runtime and awaited under another, it is
    /// cancelled there and started again under this one, on the same
    /// socket, as [`TcpStream::connect`](super::TcpStream::connect) is (a
    /// Unix-domain connect that was cancelled did nothing).
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let addr = SockAddr::unix(path.as_ref())?;
        let sock = Socket::new(libc::AF_UNIX, libc::SOCK_STREAM)?;
        sock.connect(addr).await?;
        Ok(UnixStream {
            sock,
            rx: StreamRx::default(),
        })
    }

    /// Wraps a connected stream made elsewhere.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> UnixStream {
        UnixStream {
            sock: Socket::unix_stream(OwnedFd::from(stream)),
            rx: StreamRx::default(),
        }
    }

    /// Reads once into `buf`'s spare capacity (`len..capacity`), extending
    /// its length; `Ok(0)` means end of stream.
    pub fn read(&self, buf: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)> + '_ {
        self.rx.read(&self.sock, buf)
    }

    /// Serves this stream's reads from one multishot receive from now on:
    /// the kernel receives whenever data arrives, into buffers of the loop's
    /// pool, and a read copies what is there, so a busy stream costs no
    /// operation and no poll per read. Suits many streams with small
    /// messages; a stream that carries bulk data is better off without.
    ///
    /// The pool is the loop's, 256 x 4 KiB unless set with
    /// [`Builder::recv_buffers`](crate::reactor::Builder::recv_buffers). The
    /// receive pauses once 16 pool buffers of unread data wait for the
    /// stream (the kernel may fill a few more before the pause reaches it);
    /// when the pool runs dry, reads fall back to plain receives. Dropping the stream cancels the receive, and the fd is
    /// closed when the kernel hands it back.
    ///
    /// # Errors
    /// Fails with `Unsupported` outside a runtime or on a kernel without
    /// ring-mapped provided buffers (before 5.19); a kernel that has those
    /// but no multishot receive (5.19) is detected at the first read, which
    /// then falls back to plain receives.
    ///
    /// The receive is armed on the loop of the runtime whose task reads
    /// first, and only that loop brings its data. A read with nothing
    /// received yet fails at once instead of waiting when a task of
    /// another runtime of the thread does it (that loop alive), or another
    /// executor (`futures::executor::block_on`) while no runtime of the
    /// thread runs `block_on`: the error says which, and what the receive
    /// brings stays for a read on its runtime. Through a combinator's waker
    /// inside a task of that runtime, while it runs, a read waits as usual.
    pub fn enable_multishot_recv(&self) -> io::Result<()> {
        self.rx.enable_multishot()
    }

    /// Writes `buf[..len]` once and returns how many bytes were sent.
    pub async fn write(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.sock.write(buf).await
    }

    /// Writes all of `buf[..len]`.
    pub fn write_all(&self, buf: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)> + '_ {
        self.sock.send_all(buf)
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.shutdown(how)
    }

    /// Turns the stream back into a `std` one; fails (returning the stream)
    /// while an operation still uses the fd, while a multishot receive
    /// is armed or holds unread data (see [`UnixStream::enable_multishot_recv`]),
    /// or while data that a dropped read received waits to be read.
    pub fn into_std(self) -> Result<std::os::unix::net::UnixStream, UnixStream> {
        if self.rx.busy() {
            return Err(self);
        }
        let UnixStream { sock, rx } = self;
        sock.into_fd()
            .map(std::os::unix::net::UnixStream::from)
            .map_err(|sock| UnixStream { sock, rx })
    }
}

impl AsFd for UnixStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixStream")
            .field("fd", &self.sock.raw())
            .finish()
    }
}
