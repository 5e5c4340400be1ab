//! Operations that post more than one completion (a zero-copy send's
//! notification, a multishot operation) given to the APIs that take one
//! result: `op::submit`, `op::submit_fd` and `Handle::submit`. The result is
//! the first completion, delivered once the kernel is done; a multishot
//! operation is ended; nothing the later completions carry is leaked.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use io_uring::{opcode, types};
use ringloop::{op, rt, time};

/// Two tests count this process's open fds: every test opens and closes
/// fds, so they run one at a time (`cargo test` runs a file's tests on
/// several threads of one process).
static FD_COUNTING: Mutex<()> = Mutex::new(());

fn set_sockopt(fd: i32, option: i32, value: i32) {
    // SAFETY: `value` is a live i32 of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const i32).cast(),
            4,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn a_zero_copy_send_keeps_its_buffer_until_the_kernel_is_done() {
    let _one = FD_COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    set_sockopt(listener.as_raw_fd(), libc::SO_RCVBUF, 4096);
    let tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut rx, _) = listener.accept().unwrap();
    // Fill the connection, so that the zero-copy data waits in the sender's
    // queue (the kernel still reading the buffer) until the peer reads.
    tx.set_nonblocking(true).unwrap();
    let mut queued = 0;
    while let Ok(n) = (&tx).write(&[b'A'; 65536]) {
        queued += n;
    }
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut all = Vec::new();
        rx.read_to_end(&mut all).unwrap();
        all
    });
    let fd = tx.as_raw_fd();
    let sent = rt::block_on(async move {
        let buf = vec![b'B'; 4096];
        let entry = opcode::SendZc::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32).build();
        // SAFETY: the buffer is owned by the operation; its heap data does
        // not move with it.
        let (c, mut buf) = unsafe { op::submit(entry, buf) }.await;
        // A send may be short (Linux 6.1 sent 2 048 of the 4 096 once, as
        // the reader made room): what it sent is what must arrive intact.
        assert!(c.result > 0 && c.result <= 4096, "send_zc: {}", c.result);
        // The buffer is ours again: the kernel must be done with it.
        buf.fill(b'C');
        c.result as usize
    });
    drop(tx);
    let all = reader.join().unwrap();
    assert_eq!(all.len(), queued + sent);
    assert!(
        all[queued..].iter().all(|&b| b == b'B'),
        "the peer got bytes written after the future gave the buffer back"
    );
}

/// A multishot accept on `listener`, awaited as one result.
fn multishot_accept(listener: &TcpListener) -> op::Op<()> {
    let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd())).build();
    // SAFETY: an accept's non-negative result is a new fd; the listener
    // outlives the operation in every test.
    unsafe { op::submit_fd(entry, ()) }
}

/// Connects `n` clients to `addr`.
fn connect(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

#[test]
fn a_multishot_accept_awaited_as_one_result_is_ended_and_leaks_no_fd() {
    let _one = FD_COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let in_flight = rt::current_handle().unwrap().stats().unwrap().in_flight;
        let before = open_fd_count();
        let accept = multishot_accept(&listener);
        let clients = connect(addr, 3);
        let (c, ()) = accept.await;
        assert!(c.result >= 0, "accept: {}", c.result);
        // SAFETY: the fd is the accept's result, handed to us to own.
        unsafe { libc::close(c.result) };
        assert_eq!(
            rt::current_handle().unwrap().stats().unwrap().in_flight,
            in_flight,
            "the multishot accept is still armed"
        );
        time::sleep(Duration::from_millis(20)).await;
        drop(clients);
        // The other accepted connections were closed, not leaked.
        assert_eq!(open_fd_count(), before);
    });
}

#[test]
fn a_dropped_multishot_accept_closes_every_fd_it_made() {
    let _one = FD_COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    rt::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let before = open_fd_count();
        let mut accept = Box::pin(multishot_accept(&listener));
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(accept.as_mut(), cx))
        })
        .await;
        assert!(first.is_pending());
        let clients = connect(addr, 3);
        time::sleep(Duration::from_millis(50)).await;
        drop(accept);
        time::sleep(Duration::from_millis(50)).await;
        drop(clients);
        assert_eq!(open_fd_count(), before);
    });
}

#[test]
fn a_multishot_operation_given_to_submit_runs_its_callback_once_and_ends() {
    let _one = FD_COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let lp = loop_with_timeout(Duration::from_millis(20));
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let results = log::<(i32, bool)>();
    let seen = results.clone();
    let entry = opcode::PollAdd::new(types::Fd(a.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build();
    // SAFETY: a poll points at no memory; `a` outlives the loop's run.
    unsafe {
        lp.submit(entry, move |_, c| {
            seen.borrow_mut().push((c.result, c.has_more()))
        })
    }
    .unwrap();
    // Keep the socket readable and waking the poll.
    write_fd(b.as_raw_fd(), b"y").unwrap();
    run_until(&lp, 200, || !lp.has_events().unwrap());
    let results = results.borrow();
    assert_eq!(results.len(), 1);
    assert!(results[0].0 & libc::POLLIN as i32 != 0, "{results:?}");
}
