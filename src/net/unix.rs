//! Unix-domain stream sockets through io_uring.

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::{SockAddr, Socket};

/// A Unix-domain stream socket whose reads and writes are io_uring
/// operations; the same buffer rules as [`TcpStream`](super::TcpStream).
pub struct UnixStream {
    sock: Socket,
}

impl UnixStream {
    /// A connected pair.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((UnixStream::from_std(a), UnixStream::from_std(b)))
    }

    /// Connects to the socket at `path` with `IORING_OP_CONNECT`.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let addr = SockAddr::unix(path.as_ref())?;
        let sock = Socket::new(libc::AF_UNIX, libc::SOCK_STREAM)?;
        sock.connect(addr).await?;
        Ok(UnixStream { sock })
    }

    /// Wraps a connected stream made elsewhere.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> UnixStream {
        UnixStream {
            sock: Socket::unix_stream(OwnedFd::from(stream)),
        }
    }

    /// Reads once into `buf`'s spare capacity (`len..capacity`), extending
    /// its length; `Ok(0)` means end of stream.
    pub async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.sock.recv(buf).await
    }

    /// Writes `buf[..len]` once and returns how many bytes were sent.
    pub async fn write(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.sock.send(buf).await
    }

    /// Writes all of `buf[..len]`.
    pub async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.sock.send_all(buf).await
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.shutdown(how)
    }

    /// Turns the stream back into a `std` one; fails (returning the stream)
    /// while an operation still uses the fd.
    pub fn into_std(self) -> Result<std::os::unix::net::UnixStream, UnixStream> {
        self.sock
            .into_fd()
            .map(std::os::unix::net::UnixStream::from)
            .map_err(|sock| UnixStream { sock })
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
