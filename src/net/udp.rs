//! UDP through io_uring (`IORING_OP_SENDMSG` / `IORING_OP_RECVMSG`).

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use io_uring::{opcode, types};

use super::{SockAddr, Socket, extend, no_spare_capacity};
use crate::op::{Op, Orphan};

/// A UDP socket whose datagrams go through io_uring operations.
///
/// Usable under any runtime of the thread; a send or receive in flight
/// under an idle runtime and awaited under another fails with
/// `Interrupted` (see [the module docs](super)).
pub struct UdpSocket {
    sock: Socket,
}

/// A `msghdr` with its one `iovec` and address, boxed so the pointers
/// between them stay valid while the kernel uses them.
struct Msg {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: SockAddr,
}

impl Msg {
    fn new(addr: SockAddr, data: *mut u8, len: usize) -> Box<Msg> {
        let mut m = Box::new(Msg {
            // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
            hdr: unsafe { std::mem::zeroed() },
            iov: libc::iovec {
                iov_base: data.cast(),
                iov_len: len,
            },
            addr,
        });
        let (name, namelen) = m.addr.as_mut_ptrs();
        m.hdr.msg_name = name.cast();
        // SAFETY: `namelen` points at the box's own address length.
        m.hdr.msg_namelen = unsafe { *namelen };
        m.hdr.msg_iov = &mut m.iov;
        m.hdr.msg_iovlen = 1;
        m
    }
}

impl UdpSocket {
    /// Binds a socket. Name resolution, if `addr` is a host name, blocks.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        let std = std::net::UdpSocket::bind(addr)?;
        Ok(UdpSocket {
            sock: Socket::from_fd(OwnedFd::from(std)),
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()?.to_std()
    }

    /// Sends `buf[..len]` as one datagram to `target`.
    pub async fn send_to(&self, buf: Vec<u8>, target: SocketAddr) -> (io::Result<usize>, Vec<u8>) {
        let mut buf = buf;
        let msg = Msg::new(SockAddr::from(target), buf.as_mut_ptr(), buf.len());
        let entry = opcode::SendMsg::new(types::Fd(self.sock.raw()), &msg.hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        // SAFETY: the boxed msghdr, the Vec's heap buffer and the fd are
        // owned by the operation.
        let (r, (buf, _msg, _sock)) =
            unsafe { Op::submit(entry, (buf, msg, self.sock.clone()), Orphan::Drop) }
                .result()
                .await;
        (r.map(|n| n as usize), buf)
    }

    /// Receives one datagram into `buf`'s spare capacity (`len..capacity`);
    /// a longer datagram is truncated. Returns its length and sender.
    pub async fn recv_from(&self, mut buf: Vec<u8>) -> (io::Result<(usize, SocketAddr)>, Vec<u8>) {
        let spare = buf.capacity() - buf.len();
        if spare == 0 {
            return (Err(no_spare_capacity()), buf);
        }
        // SAFETY: `spare` bytes past `len` are allocated.
        let ptr = unsafe { buf.as_mut_ptr().add(buf.len()) };
        let mut msg = Msg::new(SockAddr::empty(), ptr, spare);
        let entry = opcode::RecvMsg::new(types::Fd(self.sock.raw()), &mut msg.hdr).build();
        // SAFETY: as in `send_to`.
        let (r, (mut buf, msg, _sock)) =
            unsafe { Op::submit(entry, (buf, msg, self.sock.clone()), Orphan::Drop) }
                .result()
                .await;
        let r = r.and_then(|n| {
            let mut addr = msg.addr;
            let (_, len) = addr.as_mut_ptrs();
            // SAFETY: `len` points into `addr`, a local copy.
            unsafe { *len = msg.hdr.msg_namelen };
            Ok((extend(&mut buf, n), addr.to_std()?))
        });
        (r, buf)
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("fd", &self.sock.raw())
            .field("addr", &self.local_addr().ok())
            .finish()
    }
}
