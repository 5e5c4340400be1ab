//! Cancellation safety: dropped operation futures cancel their io_uring
//! operation, buffers outlive the kernel's use, fds produced after a cancel
//! are closed, peers see EOF. The fd counts need this binary to itself, so
//! its tests run one at a time.

use std::io::Read;
use std::net::Shutdown;
use std::pin::pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use ringloop::net::{TcpListener, TcpStream, UnixStream};
use ringloop::rt::{self, Runtime};
use ringloop::{fs, time};

static SERIAL: Mutex<()> = Mutex::new(());

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The fd count once it has stopped changing (a previous test's thread may
/// still be running its thread-local destructors).
fn settled_fd_count() -> usize {
    let mut last = fd_count();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(10));
        let now = fd_count();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Waits up to 2 s for the fd count to come back to `expected`; a real leak
/// never does.
fn assert_fd_count_returns_to(expected: usize, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while fd_count() != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fd_count(), expected, "{what}");
}

/// Asserts that the peer of `client` has closed: a read returns 0 within 10 s.
fn assert_peer_sees_eof(client: &mut std::net::TcpStream, what: &str) {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(client.read(&mut b).unwrap(), 0, "{what}");
}

/// Lets the loop run for a while (cancellations complete, callbacks run).
async fn settle() {
    time::sleep(Duration::from_millis(50)).await;
}

#[test]
fn dropped_accept_leaks_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        settle().await;
        let before = fd_count();
        let base = rt.handle().stats().unwrap().in_flight;
        for _ in 0..50 {
            let r = time::timeout(Duration::from_millis(1), listener.accept()).await;
            assert!(r.is_err());
        }
        settle().await;
        assert_eq!(fd_count(), before, "cancelled accepts leak no fds");
        let stats = rt.handle().stats().unwrap();
        assert_eq!(
            stats.in_flight, base,
            "cancelled ops are gone from the ring: {stats:?}"
        );
    });
}

#[test]
fn accept_completed_but_dropped_closes_the_connection() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        settle().await;
        let before = fd_count();
        let mut client = {
            let mut accept = Box::pin(listener.accept());
            // Submit the accept, then let it complete without polling it again.
            let first = std::future::poll_fn(|cx| Poll::Ready(accept.as_mut().poll(cx))).await;
            assert!(first.is_pending());
            let client = std::net::TcpStream::connect(addr).unwrap();
            settle().await;
            // The future is dropped here holding an accepted, unread fd.
            drop(accept);
            client
        };
        assert_peer_sees_eof(&mut client, "peer sees EOF");
        settle().await;
        assert_eq!(fd_count(), before + 1, "no fd left behind");
    });
}

#[test]
fn accept_racing_its_cancel_never_leaks() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        settle().await;
        let before = fd_count();
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for i in 0..40 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            // Cancel at varying points: some accepts complete, some are
            // cancelled, some complete after the cancel was sent (and the
            // connection they took is then closed).
            let limit = Duration::from_micros(50 * (i % 8));
            if let Ok(Ok((s, _))) = time::timeout(limit, listener.accept()).await {
                accepted.push(s);
            }
        }
        // Accept whatever is still in the backlog.
        while let Ok(Ok((s, _))) =
            time::timeout(Duration::from_millis(100), listener.accept()).await
        {
            accepted.push(s);
        }
        // Every client either talks to an accepted stream or sees EOF: no
        // connection is stuck in a leaked fd.
        for s in &accepted {
            s.write_all(b"!".to_vec()).await.0.unwrap();
        }
        let (mut talked, mut eof) = (0, 0);
        for mut c in clients {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 1];
            match c.read(&mut b).expect("no client is left hanging") {
                0 => eof += 1,
                _ => talked += 1,
            }
        }
        assert_eq!(talked, accepted.len());
        assert_eq!(talked + eof, 40);
        drop(accepted);
        settle().await;
        assert_eq!(fd_count(), before, "no fd leaked");
    });
}

#[test]
fn dropped_read_keeps_the_stream_usable_and_buffer_alive() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        for _ in 0..20 {
            // The buffer moves into the op; the timeout drops the future.
            let r = time::timeout(
                Duration::from_millis(1),
                a.read(Vec::with_capacity(1 << 16)),
            )
            .await;
            assert!(r.is_err());
        }
        settle().await;
        b.write_all(b"after".to_vec()).await.0.unwrap();
        let (r, buf) = a.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap(), 5);
        assert_eq!(&buf, b"after");
    });
}

#[test]
fn aborted_reader_task_closes_its_socket_peer_sees_eof() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        settle().await;
        let before = fd_count();
        let task = rt::spawn(async move {
            // Blocks in an in-flight recv holding the socket.
            let _ = server_side.read(Vec::with_capacity(64)).await;
            unreachable!("nobody writes");
        });
        settle().await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        settle().await;
        assert_eq!(
            fd_count(),
            before - 1,
            "the socket is closed once its recv is cancelled"
        );
        assert_peer_sees_eof(&mut client, "peer sees EOF");
    });
}

#[test]
fn dropping_the_runtime_with_ops_in_flight_cleans_up() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = settled_fd_count();
    let (client, peer_addr_listener) = {
        let rt = Runtime::new().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            // An accept and a recv left in flight.
            rt::spawn(async move {
                let _ = listener.accept().await;
            });
            let s = TcpStream::connect(addr).await.unwrap();
            rt::spawn(async move {
                let _ = s.read(Vec::with_capacity(8)).await;
            });
            settle().await;
        });
        let (server_conn, _) = l.accept().unwrap();
        drop(rt);
        (server_conn, l)
    };
    let mut client = client;
    assert_peer_sees_eof(&mut client, "peer of a dropped runtime's socket sees EOF");
    drop(client);
    drop(peer_addr_listener);
    assert_fd_count_returns_to(before, "runtime drop leaks no fds");
}

#[test]
fn dropped_open_closes_the_file() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::env::temp_dir().join(format!("ringloop-cancel-open-{}", std::process::id()));
    std::fs::write(&path, b"x").unwrap();
    rt::block_on(async {
        settle().await;
        let before = fd_count();
        for _ in 0..50 {
            let mut open = pin!(fs::File::open(&path));
            let first = std::future::poll_fn(|cx| Poll::Ready(open.as_mut().poll(cx))).await;
            if let Poll::Ready(r) = first {
                drop(r);
            }
            // Dropped right after submission: cancelled, or completed and closed.
        }
        settle().await;
        assert_eq!(fd_count(), before);
    });
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn shutdown_then_read_and_write_on_closed_socket() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let (r, _) = a.read(Vec::with_capacity(8)).await;
        assert_eq!(r.unwrap(), 0);
        let (r, _) = a.write(b"x".to_vec()).await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
        a.shutdown(Shutdown::Both).unwrap();
    });
}

/// An operation future that outlives its runtime: the loop's teardown
/// cancels the operation and waits for the kernel, and the future then
/// resolves with the completion the loop saw (the cancel, or the result it
/// had already stored) and hands its resources back. One dropped unpolled
/// releases its resources.
#[test]
fn op_futures_outliving_their_runtime_resolve_with_the_teardown_completion() {
    use io_uring::{opcode, types::Fd};
    use std::future::Future;
    use std::os::fd::AsRawFd;
    use std::rc::Rc;
    use std::task::{Context, Waker};

    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A pipe that never gets data: a read on it stays in flight.
    let (r, w) = std::io::pipe().unwrap();
    let marker = Rc::new(());
    let rt = Runtime::new().unwrap();
    let (mut read, mut nop, unread) = rt.block_on(async {
        let mut buf = vec![0u8; 8];
        let entry = opcode::Read::new(Fd(r.as_raw_fd()), buf.as_mut_ptr(), 8).build();
        // SAFETY: the buffer's heap data is owned by the operation.
        let read = unsafe { ringloop::op::submit(entry, buf) };
        // SAFETY: NOP points at no memory.
        let nop = unsafe { ringloop::op::submit(opcode::Nop::new().build(), 7u8) };
        let entry = opcode::Read::new(Fd(r.as_raw_fd()), std::ptr::null_mut(), 0).build();
        // SAFETY: a zero-length read points at no memory.
        let unread = unsafe { ringloop::op::submit(entry, marker.clone()) };
        // One loop turn: the NOP completes and its result waits, unread.
        rt::yield_now().await;
        (read, nop, unread)
    });
    assert_eq!(Rc::strong_count(&marker), 2);
    drop(rt);
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::Pin::new(&mut read).poll(&mut cx) {
        Poll::Ready((c, buf)) => {
            assert_eq!(c.result, -libc::ECANCELED, "the read was cancelled");
            assert_eq!(buf.len(), 8, "and its buffer comes back");
        }
        Poll::Pending => panic!("a read the loop settled at teardown never resolves"),
    }
    match std::pin::Pin::new(&mut nop).poll(&mut cx) {
        Poll::Ready((c, v)) => assert_eq!((c.result, v), (0, 7), "the NOP's own result"),
        Poll::Pending => panic!("a finished NOP never resolves"),
    }
    drop(unread);
    assert_eq!(
        Rc::strong_count(&marker),
        1,
        "dropping it released its resources"
    );
    drop(w);
}

/// Submits `read` (a future of a read), lets its receive complete while the
/// future is not polled, then drops it: the kernel has received the bytes
/// into a buffer nobody will look at.
async fn drop_a_read_that_completed<F: std::future::Future>(
    read: F,
    peer: &mut std::net::TcpStream,
    data: &[u8],
) {
    use std::io::Write;
    let mut read = Box::pin(read);
    let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "nothing to read yet");
    peer.write_all(data).unwrap();
    settle().await;
    drop(read);
}

/// A loopback TCP stream on this runtime and its peer, a std stream.
async fn accepted_stream() -> (TcpStream, std::net::TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    (stream, peer)
}

/// Reads `n` bytes from `stream` in reads of at most `cap`; a read that
/// waits 5 s means bytes were lost.
async fn read_n(stream: &TcpStream, n: usize, cap: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let (r, buf) = time::timeout(Duration::from_secs(5), stream.read(Vec::with_capacity(cap)))
            .await
            .unwrap_or_else(|_| panic!("data lost: only {:?} came", String::from_utf8_lossy(&got)));
        assert!(r.unwrap() > 0, "no end of stream before the data");
        got.extend_from_slice(&buf);
    }
    got
}

#[test]
fn dropped_read_that_had_completed_loses_no_data() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let (stream, mut peer) = accepted_stream().await;
        drop_a_read_that_completed(stream.read(Vec::with_capacity(64)), &mut peer, b"hello").await;
        {
            use std::io::Write;
            peer.write_all(b" world").unwrap();
        }
        // The salvaged bytes come first, in order, then what came after,
        // also into a buffer smaller than what was salvaged.
        assert_eq!(&read_n(&stream, 11, 3).await, b"hello world");
        // Nothing salvaged is left over: the stream can be handed back.
        assert!(stream.into_std().is_ok());
    });
}

#[test]
fn read_timed_out_after_its_data_arrived_keeps_the_data() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        let (b, mut sent, mut got) = (std::rc::Rc::new(b), Vec::new(), Vec::new());
        // A writer sends numbered bytes at random-ish moments while the
        // reader reads with short timeouts: some reads are dropped just as
        // their data arrives. Every byte must still be read, once, in order.
        let writer = {
            let b = b.clone();
            rt::spawn(async move {
                let mut sent = Vec::new();
                for i in 0..200u32 {
                    let byte = (i % 251) as u8;
                    b.write_all(vec![byte]).await.0.unwrap();
                    sent.push(byte);
                    time::sleep(Duration::from_micros(u64::from(i % 7) * 30)).await;
                }
                sent
            })
        };
        let mut timeouts = 0;
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < 200 {
            assert!(
                std::time::Instant::now() < give_up,
                "data lost: {} of 200 bytes came",
                got.len()
            );
            match time::timeout(Duration::from_micros(40), a.read(Vec::with_capacity(8))).await {
                Ok((r, buf)) => {
                    assert!(r.unwrap() > 0);
                    got.extend_from_slice(&buf);
                }
                Err(_) => timeouts += 1,
            }
        }
        sent.extend(writer.await.unwrap());
        assert_eq!(
            got, sent,
            "every byte once, in order ({timeouts} reads timed out)"
        );
        assert!(timeouts > 0, "the test timed some reads out");
        drop(b);
    });
}

#[test]
fn salvaged_bytes_come_before_a_multishot_receive() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let (stream, mut peer) = accepted_stream().await;
        drop_a_read_that_completed(stream.read(Vec::with_capacity(64)), &mut peer, b"first ").await;
        stream.enable_multishot_recv().unwrap();
        {
            use std::io::Write;
            peer.write_all(b"second").unwrap();
        }
        assert_eq!(&read_n(&stream, 12, 64).await, b"first second");
    });
}

#[test]
fn raw_fd_op_completed_but_dropped_closes_its_fd() {
    use std::os::fd::AsRawFd;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        settle().await;
        let before = fd_count();
        let entry = io_uring::opcode::Accept::new(
            io_uring::types::Fd(listener.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_CLOEXEC)
        .build();
        // SAFETY: the entry points at nothing; its result is a new fd.
        let mut accept = Box::pin(unsafe { ringloop::op::submit_fd(entry, ()) });
        let first = std::future::poll_fn(|cx| Poll::Ready(accept.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        settle().await;
        // Dropped holding an accepted fd that nobody will ever see.
        drop(accept);
        assert_peer_sees_eof(&mut client, "the peer sees EOF: the fd was closed");
        settle().await;
        assert_eq!(fd_count(), before + 1, "only the client's fd is left");
    });
}
