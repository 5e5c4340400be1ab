//! Completion-based sockets: TCP, Unix, UDP, bad input.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use ringloop::net::{TcpListener, TcpStream, UdpSocket, UnixStream};
use ringloop::{rt, time};

#[test]
fn tcp_echo_round_trips() {
    rt::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rt::spawn(async move {
            let (s, peer) = listener.accept().await.unwrap();
            assert!(peer.ip().is_loopback());
            let mut buf = Vec::with_capacity(1024);
            loop {
                let (r, b) = s.read(buf).await;
                buf = b;
                let n = r.unwrap();
                if n == 0 {
                    return;
                }
                let (r, b) = s.write_all(buf).await;
                r.unwrap();
                buf = b;
                buf.clear();
            }
        });
        let c = TcpStream::connect(addr).await.unwrap();
        c.set_nodelay(true).unwrap();
        assert_eq!(c.peer_addr().unwrap(), addr);
        for i in 0..100u32 {
            let msg = format!("message {i}").into_bytes();
            let (r, _) = c.write_all(msg.clone()).await;
            r.unwrap();
            let mut got = Vec::new();
            while got.len() < msg.len() {
                let (r, b) = c.read(Vec::with_capacity(64)).await;
                assert!(r.unwrap() > 0);
                got.extend_from_slice(&b);
            }
            assert_eq!(got, msg);
        }
        c.shutdown(Shutdown::Write).unwrap();
        let (r, _) = c.read(Vec::with_capacity(8)).await;
        assert_eq!(r.unwrap(), 0, "server closes after our FIN");
        server.await.unwrap();
    });
}

#[test]
fn read_appends_into_spare_capacity() {
    rt::block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        a.write_all(b"world".to_vec()).await.0.unwrap();
        let mut buf = Vec::with_capacity(16);
        buf.extend_from_slice(b"hello ");
        let (r, buf) = b.read(buf).await;
        assert_eq!(r.unwrap(), 5);
        assert_eq!(&buf, b"hello world");
        // No spare capacity: an error, not a 0-byte "EOF".
        let full = Vec::new();
        let (r, _) = b.read(full).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    });
}

#[test]
fn connect_to_closed_port_is_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    rt::block_on(async {
        let err = TcpStream::connect(("127.0.0.1", port)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    });
}

#[test]
fn peer_reset_and_closed_socket_give_errors() {
    rt::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let std_peer = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().await.unwrap();
        // Unread data at close makes the kernel send RST.
        s.write_all(b"unread".to_vec()).await.0.unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(std_peer);
        std::thread::sleep(Duration::from_millis(50));
        let (r, _) = s.read(Vec::with_capacity(8)).await;
        match r {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
            Ok(n) => assert_eq!(n, 0),
        }
        // Writing after the reset fails (EPIPE or ECONNRESET), without SIGPIPE.
        let mut failed = false;
        for _ in 0..10 {
            if s.write_all(vec![0u8; 1024]).await.0.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        // Reading a socket that we shut down returns EOF.
        let (a, _b) = UnixStream::pair().unwrap();
        a.shutdown(Shutdown::Read).unwrap();
        let (r, _) = a.read(Vec::with_capacity(8)).await;
        assert_eq!(r.unwrap(), 0);
    });
}

#[test]
fn unix_stream_connect_and_std_interop() {
    let dir = std::env::temp_dir().join(format!("ringloop-rt-net-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    rt::block_on(async {
        let s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"abcd".to_vec()).await.0.unwrap();
        let (r, buf) = s.read(Vec::with_capacity(4)).await;
        assert_eq!(r.unwrap(), 4);
        assert_eq!(&buf, b"abcd");
        let missing = UnixStream::connect(dir.join("missing")).await.unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    });
    t.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unix_stream_connect_to_the_empty_path_is_invalid_input() {
    // With its NUL terminator, "" would name the abstract socket "", which
    // a listener here makes reachable.
    use std::os::linux::net::SocketAddrExt;
    let name = std::os::unix::net::SocketAddr::from_abstract_name(b"").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&name).unwrap();
    rt::block_on(async {
        let err = UnixStream::connect("").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    });
}

#[test]
fn udp_send_to_and_recv_from() {
    rt::block_on(async {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b_addr = b.local_addr().unwrap();
        let (r, _) = a.send_to(b"datagram".to_vec(), b_addr).await;
        assert_eq!(r.unwrap(), 8);
        let (r, buf) = b.recv_from(Vec::with_capacity(64)).await;
        let (n, from) = r.unwrap();
        assert_eq!(n, 8);
        assert_eq!(&buf, b"datagram");
        assert_eq!(from, a.local_addr().unwrap());
        // Truncation to the spare capacity.
        a.send_to(vec![7u8; 100], b_addr).await.0.unwrap();
        let (r, buf) = b.recv_from(Vec::with_capacity(10)).await;
        assert_eq!(r.unwrap().0, 10);
        assert_eq!(buf.len(), 10);
    });
}

#[test]
fn io_without_runtime_is_an_error() {
    // Futures polled on a runtime-less thread by another executor: ops fail cleanly.
    let (a, _b) = UnixStream::pair().unwrap();
    let fut = a.read(Vec::with_capacity(4));
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready((r, _)) => assert!(r.is_err()),
        std::task::Poll::Pending => panic!("should fail at once"),
    }
}

#[test]
fn many_connections_batch_into_few_enters() {
    let rt = rt::Runtime::new().unwrap();
    let handle = rt.handle();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rt::spawn(async move {
            for _ in 0..20 {
                let (s, _) = listener.accept().await.unwrap();
                rt::spawn(async move {
                    let mut buf = Vec::with_capacity(64);
                    loop {
                        let (r, b) = s.read(buf).await;
                        buf = b;
                        if r.unwrap_or(0) == 0 {
                            return;
                        }
                        buf = s.write_all(buf).await.1;
                        buf.clear();
                    }
                });
            }
        });
        let mut clients = Vec::new();
        for _ in 0..20 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        server.await.unwrap();
        let rounds = 50;
        let before = handle.stats().unwrap();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|c| {
                rt::spawn(async move {
                    let mut buf = Vec::with_capacity(64);
                    for _ in 0..rounds {
                        buf.clear();
                        buf.extend_from_slice(b"ping");
                        buf = c.write_all(buf).await.1;
                        buf.clear();
                        let (r, b) = c.read(buf).await;
                        buf = b;
                        assert_eq!(r.unwrap(), 4);
                    }
                })
            })
            .collect();
        for t in tasks {
            time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap()
                .unwrap();
        }
        let after = handle.stats().unwrap();
        let ops = 20 * rounds * 4; // write + read on each side
        let enters = after.enters - before.enters;
        eprintln!("{ops} operations in {enters} io_uring_enter calls");
        assert!(
            enters < ops as u64 / 2,
            "{enters} enters for {ops} ops: no batching"
        );
    });
}

/// On a plain ring (no SINGLE_ISSUER/DEFER_TASKRUN, the fallback for old
/// kernels) an accept submitted in the same `io_uring_enter` as the cancel
/// of an earlier accept on the same listener used to hang: the cancelled
/// accept's poll entry stayed on the listener's wait queue until task work
/// ran, and the connection's exclusive wake-up went to it. `cancel_op` now
/// hands cancels to the kernel on their own on such rings.
#[test]
fn works_on_a_ring_without_defer_taskrun() {
    let lp = ringloop::EventLoop::builder()
        .plain_setup(true)
        .build()
        .unwrap();
    let runtime = rt::Runtime::with_loop(lp).unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A cancelled accept, then a real one.
        assert!(
            time::timeout(Duration::from_millis(5), listener.accept())
                .await
                .is_err()
        );
        let client = rt::spawn(async move {
            let c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"plain".to_vec()).await.0.unwrap();
        });
        let (s, _) = listener.accept().await.unwrap();
        let (r, buf) = s.read(Vec::with_capacity(8)).await;
        assert_eq!(r.unwrap(), 5);
        assert_eq!(&buf, b"plain");
        client.await.unwrap();
    });
}

/// After a short read the next receive asks the kernel to wait for
/// readiness first. That guess must never lose data or EOF: data already
/// buffered when the read starts, data that arrives later, a full buffer
/// (which ends the guess) and the peer's close all come through in order.
#[test]
fn reads_after_a_short_read_see_buffered_data_later_data_and_eof() {
    rt::block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _) = b.write_all(b"ab".to_vec()).await;
        r.unwrap();
        // Short read: the socket is now empty.
        let (r, buf) = a.read(Vec::with_capacity(16)).await;
        assert_eq!((r.unwrap(), &buf[..]), (2, &b"ab"[..]));
        // Already buffered when the next read starts (the guess is wrong).
        let (r, _) = b.write_all(b"cd".to_vec()).await;
        r.unwrap();
        let (r, buf) = a.read(Vec::with_capacity(16)).await;
        assert_eq!((r.unwrap(), &buf[..]), (2, &b"cd"[..]));
        // Arrives while the read waits.
        let writer = rt::spawn(async move {
            time::sleep(Duration::from_millis(20)).await;
            let (r, _) = b.write_all(vec![b'x'; 40]).await;
            r.unwrap();
            b
        });
        // Exactly fills the buffer: not a short read.
        let (r, buf) = a.read(Vec::with_capacity(8)).await;
        assert_eq!((r.unwrap(), &buf[..]), (8, &[b'x'; 8][..]));
        let (r, buf) = a.read(Vec::with_capacity(64)).await;
        assert_eq!((r.unwrap(), &buf[..]), (32, &[b'x'; 32][..]));
        // The peer closes while a read waits: EOF.
        let b = writer.await.unwrap();
        let closer = rt::spawn(async move {
            time::sleep(Duration::from_millis(20)).await;
            drop(b);
        });
        let (r, _) = a.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap(), 0);
        closer.await.unwrap();
    });
}

/// On a loop that serves one completion per `io_uring_enter` (idle here), a
/// send goes out directly: `write_all` and `write` resolve at their first
/// poll, with no operation and so no completion.
#[test]
fn a_send_on_an_idle_loop_goes_out_directly() {
    let rt = rt::Runtime::new().unwrap();
    let handle = rt.handle();
    rt.block_on(async {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a = UnixStream::from_std(a);
        // One quiet iteration: the last reap brought nothing.
        time::sleep(Duration::from_millis(1)).await;
        let before = handle.stats().unwrap().completions;
        a.write_all(b"direct".to_vec()).await.0.unwrap();
        let (r, _) = a.write(b"!".to_vec()).await;
        assert_eq!(r.unwrap(), 1);
        assert_eq!(
            handle.stats().unwrap().completions,
            before,
            "no operation ran"
        );
        let mut got = [0u8; 7];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"direct!");
    });
}

/// A direct send that fills the socket leaves the rest to a `SEND` through
/// the ring, which waits for room: 4 MiB arrive whole and in order.
#[test]
fn a_direct_send_that_fills_the_socket_finishes_through_the_ring() {
    const LEN: usize = 4 << 20;
    let data: Vec<u8> = (0..LEN).map(|k| (k % 251) as u8).collect();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut b = b;
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        got
    });
    let rt = rt::Runtime::new().unwrap();
    let handle = rt.handle();
    rt.block_on(async {
        let a = UnixStream::from_std(a);
        time::sleep(Duration::from_millis(1)).await;
        let before = handle.stats().unwrap().completions;
        a.write_all(data.clone()).await.0.unwrap();
        assert!(
            handle.stats().unwrap().completions > before,
            "the rest went through the ring"
        );
    });
    drop(rt);
    assert!(reader.join().unwrap() == data, "4 MiB arrive whole");
}

/// Outside a runtime a write fails as every operation does, and sends
/// nothing, even though a direct send would go through.
#[test]
fn a_write_outside_a_runtime_fails_and_sends_nothing() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let a = UnixStream::from_std(a);
    let mut cx = Context::from_waker(Waker::noop());
    let mut write_all = std::pin::pin!(a.write_all(b"x".to_vec()));
    match write_all.as_mut().poll(&mut cx) {
        Poll::Ready((r, buf)) => {
            assert!(r.is_err(), "write_all outside a runtime succeeded");
            assert_eq!(buf, b"x", "the buffer comes back");
        }
        Poll::Pending => panic!("write_all outside a runtime is pending"),
    }
    let mut write = std::pin::pin!(a.write(b"y".to_vec()));
    match write.as_mut().poll(&mut cx) {
        Poll::Ready((r, _)) => assert!(r.is_err(), "write outside a runtime succeeded"),
        Poll::Pending => panic!("write outside a runtime is pending"),
    }
    b.set_nonblocking(true).unwrap();
    let err = b.read(&mut [0u8; 4]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "something was sent");
}

/// traps.md, liburing#782 and #363: a stream dropped while its receive is
/// still only queued in the submission queue. The SQE names the fd by
/// number, so the fd must stay open until the kernel is done with the
/// operation (else the number could be reused and the receive land on
/// another file); once the cancel is done, the peer sees EOF.
#[test]
fn dropped_stream_keeps_its_fd_until_a_queued_recv_is_done() {
    use std::future::Future;
    use std::os::fd::{AsFd, AsRawFd};
    use std::task::Poll;
    rt::block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        let raw = a.as_fd().as_raw_fd();
        {
            let mut read = std::pin::pin!(a.read(Vec::with_capacity(16)));
            let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "the receive is queued, not done");
        }
        drop(a);
        // SAFETY: fcntl(F_GETFD) only inspects the fd table.
        assert!(
            unsafe { libc::fcntl(raw, libc::F_GETFD) } >= 0,
            "fd {raw} closed while a queued SQE still names it"
        );
        time::sleep(Duration::from_millis(50)).await;
        let (r, _) = b.read(Vec::with_capacity(8)).await;
        assert_eq!(
            r.unwrap(),
            0,
            "the peer sees EOF once the receive is cancelled"
        );
    });
}
