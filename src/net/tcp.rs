//! TCP through io_uring: [`TcpListener`] and [`TcpStream`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{SockAddr, Socket, StreamRx};

/// A TCP listening socket whose `accept` is an `IORING_OP_ACCEPT`.
///
/// Usable under any runtime of the thread; an accept in flight under an
/// idle runtime and awaited under another fails with `Interrupted` (see
/// [the module docs](super)).
pub struct TcpListener {
    sock: Socket,
}

impl TcpListener {
    /// Binds and listens (with `SO_REUSEADDR`, as `std` does). Name
    /// resolution, if `addr` is a host name, blocks.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        let std = std::net::TcpListener::bind(addr)?;
        Ok(TcpListener::from_std(std))
    }

    /// Wraps a listener made elsewhere (blocking or not: either works).
    pub fn from_std(listener: std::net::TcpListener) -> TcpListener {
        TcpListener {
            sock: Socket::from_fd(OwnedFd::from(listener)),
        }
    }

    /// Accepts a connection. If the future is dropped before it completes,
    /// the accept is cancelled, and a connection it accepted anyway is
    /// closed (the peer sees EOF), never leaked.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (fd, addr) = self.sock.accept().await?;
        let stream = TcpStream {
            sock: Socket::from_fd(fd),
            rx: StreamRx::default(),
        };
        Ok((stream, addr.to_std()?))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()?.to_std()
    }
}

impl AsFd for TcpListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("fd", &self.sock.raw())
            .field("addr", &self.local_addr().ok())
            .finish()
    }
}

/// A TCP connection whose reads and writes are io_uring operations
/// (`IORING_OP_RECV` / `IORING_OP_SEND`).
///
/// Methods take `&self`, so one task can read while another writes. The fd
/// is closed when the stream and all operations using it are gone. Usable
/// under any runtime of the thread; an operation in flight under an idle
/// runtime and awaited under another fails with `Interrupted` (see [the
/// module docs](super)), but for [`TcpStream::connect`], which starts
/// again there.
pub struct TcpStream {
    sock: Socket,
    rx: StreamRx,
}

impl TcpStream {
    /// Connects with `IORING_OP_CONNECT`, trying each resolved address in
    /// turn. A closed port gives `ConnectionRefused`. Name resolution, if
    /// `addr` is a host name, blocks.
    ///
    /// Unlike other operations (see [the module docs](super)), a connect in
    /// flight under an idle runtime and awaited under another does not fail
    /// with `Interrupted`: it is cancelled on the idle runtime's loop and
    /// started again under this one, on the same socket. If the cancelled
    /// attempt had started the handshake, the kernel goes on with it (a new
    /// `connect(2)` would fail with `EALREADY`), so the connect waits for
    /// the socket to become writable and takes its pending error, as after
    /// a non-blocking `connect(2)`: it gives the stream once the handshake
    /// is done, or the error it ended with (`ConnectionRefused`, a
    /// timeout).
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
        for a in addrs {
            let domain = if a.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let sock = Socket::new(domain, libc::SOCK_STREAM)?;
            match sock.connect(SockAddr::from(a)).await {
                Ok(()) => {
                    return Ok(TcpStream {
                        sock,
                        rx: StreamRx::default(),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Wraps a connected stream made elsewhere.
    pub fn from_std(stream: std::net::TcpStream) -> TcpStream {
        TcpStream {
            sock: Socket::from_fd(OwnedFd::from(stream)),
            rx: StreamRx::default(),
        }
    }

    /// Reads once into `buf`'s **spare capacity** (`len..capacity`) and
    /// extends its length by the bytes read; `Ok(0)` means end of stream.
    /// A buffer without spare capacity gives `InvalidInput`.
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

    /// Shuts down one or both directions at once (a plain `shutdown(2)`,
    /// which never blocks).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.shutdown(how)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()?.to_std()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.peer_addr()?.to_std()
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.sock
            .set_int_opt(libc::IPPROTO_TCP, libc::TCP_NODELAY, i32::from(nodelay))
    }

    /// Turns the stream back into a `std` one; fails (returning the stream)
    /// while an operation still uses the fd, while a multishot receive
    /// is armed or holds unread data (see [`TcpStream::enable_multishot_recv`]),
    /// or while data that a dropped read received waits to be read.
    pub fn into_std(self) -> Result<std::net::TcpStream, TcpStream> {
        if self.rx.busy() {
            return Err(self);
        }
        let TcpStream { sock, rx } = self;
        sock.into_fd()
            .map(std::net::TcpStream::from)
            .map_err(|sock| TcpStream { sock, rx })
    }
}

impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("fd", &self.sock.raw())
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}
