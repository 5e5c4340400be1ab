//! Why a level watch re-arms a one-shot poll: the two cheaper readiness
//! re-checks io_uring might offer, tried on the running kernel.
//!
//! ```text
//! cargo run --release --example probe_recheck
//! ```
//!
//! 1. `URING_CMD` with `SOCKET_URING_OP_SIOCINQ` (queued bytes, Linux 6.7+)
//!    on a TCP socket and on Unix stream and datagram sockets (the kind
//!    pipe_bench uses).
//! 2. `recv(MSG_PEEK | MSG_DONTWAIT)` on a Unix stream whose peer closed
//!    with data unread: does the peek consume the pending `ECONNRESET`, so
//!    that the application's own read sees EOF instead?
//!
//! It prints what the kernel answered; README "What the loop's speed is made
//! of" quotes the answers of Linux 6.18, 6.12 and 6.1.

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};

use io_uring::{IoUring, opcode, types};

/// `SOCKET_URING_OP_SIOCINQ` from `<linux/io_uring.h>`.
const SOCKET_URING_OP_SIOCINQ: u32 = 0;

/// Submits one SIOCINQ command for `fd` and returns its completion's result.
fn siocinq(ring: &mut IoUring, fd: RawFd) -> io::Result<i32> {
    let entry = opcode::UringCmd16::new(types::Fd(fd), SOCKET_URING_OP_SIOCINQ)
        .build()
        .user_data(1);
    // SAFETY: the command carries no pointers; the ring is waited on below,
    // before `fd` can be closed.
    unsafe { ring.submission().push(&entry) }.map_err(io::Error::other)?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("no completion"))?;
    Ok(cqe.result())
}

/// Describes a result: a count, or the errno's name.
fn describe(res: i32) -> String {
    if res >= 0 {
        format!("{res} bytes queued")
    } else {
        format!("error: {}", io::Error::from_raw_os_error(-res))
    }
}

/// One non-blocking `recv` of up to 16 bytes, described.
fn recv(fd: RawFd, flags: i32) -> String {
    let mut buf = [0u8; 16];
    // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        format!("error: {}", io::Error::last_os_error())
    } else {
        format!("{n} bytes")
    }
}

fn main() -> io::Result<()> {
    let mut ring = IoUring::new(8)?;
    let message = b"hello";

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    client.write_all(message)?;
    // Loopback delivers within the write; a short pause rules out a race.
    std::thread::sleep(std::time::Duration::from_millis(20));
    println!(
        "siocinq tcp: {}",
        describe(siocinq(&mut ring, server.as_raw_fd())?)
    );

    let (mut a, b) = UnixStream::pair()?;
    a.write_all(message)?;
    println!(
        "siocinq unix-stream: {}",
        describe(siocinq(&mut ring, b.as_raw_fd())?)
    );

    let (tx, rx) = UnixDatagram::pair()?;
    tx.send(message)?;
    println!(
        "siocinq unix-dgram: {}",
        describe(siocinq(&mut ring, rx.as_raw_fd())?)
    );

    // `b` closes with `message` unread, which sets ECONNRESET on `a`.
    drop(b);
    let fd = a.as_raw_fd();
    let peek = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    println!("peek after reset, first: {}", recv(fd, peek));
    println!("peek after reset, second: {}", recv(fd, peek));
    println!("read after the peeks: {}", recv(fd, libc::MSG_DONTWAIT));
    Ok(())
}
