//! A stream's reads under cancellation (`tests/prop_net.rs`, fuzz target
//! `net_reads` and the corpus replay all call [`check_net_reads`]).
//!
//! Random sequences of a peer writing, reads started, polled and dropped
//! (some just as their data came), loop turns and switching to multishot
//! receives. Checked: the bytes the reads return are exactly the bytes
//! written, once each and in order, and a read never reports an end of
//! stream or an error. On both ring set-ups: without `DEFER_TASKRUN` a
//! dropped receive's completion can wait unreaped in the CQ while the next
//! read is submitted.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use ringloop::EventLoop;
use ringloop::net::UnixStream;
use ringloop::rt::{self, Runtime};

struct NoopWaker;

impl Wake for NoopWaker {
    fn wake(self: Arc<Self>) {}
}

type Read<'a> = Pin<Box<dyn Future<Output = (std::io::Result<usize>, Vec<u8>)> + 'a>>;

/// Polls `read` once with `cx` (the model's own waker, no task's) inside
/// `rt`'s `block_on`, which polls it at once and takes no loop turn for
/// it: polled with a waker of its own while no runtime runs, a read would
/// belong to another executor, which nothing serves, and fail at once.
fn poll_read<'a>(
    rt: &Runtime,
    read: &mut Read<'a>,
    cx: &mut Context<'_>,
) -> Poll<(std::io::Result<usize>, Vec<u8>)> {
    rt.block_on(std::future::poll_fn(|_| {
        Poll::Ready(read.as_mut().poll(cx))
    }))
}

/// Runs one case: `data` is read two bytes at a time as (what, argument).
pub fn run(data: &[u8], plain_setup: bool) {
    let lp = EventLoop::builder()
        .plain_setup(plain_setup)
        .build()
        .unwrap();
    let rt = Runtime::with_loop(lp).unwrap();
    let (mine, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let stream = UnixStream::from_std(mine);
    let (mut written, mut got): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    let mut read: Option<Read<'_>> = None;
    let waker = Waker::from(Arc::new(NoopWaker));
    let mut cx = Context::from_waker(&waker);

    let take = |r: (std::io::Result<usize>, Vec<u8>), got: &mut Vec<u8>| {
        let (n, buf) = r;
        let n = n.expect("a read never fails here");
        assert!(n > 0, "no end of stream: the peer is open");
        assert_eq!(buf.len(), n);
        got.extend_from_slice(&buf);
    };
    for pair in data.chunks(2) {
        let (what, arg) = (pair[0] % 6, pair.get(1).copied().unwrap_or(0));
        match what {
            0 => {
                let n = 1 + usize::from(arg % 16);
                let bytes: Vec<u8> = (written.len()..written.len() + n)
                    .map(|i| (i % 251) as u8)
                    .collect();
                // Non-blocking: once the socket's buffer is full (many small
                // writes nobody reads), the write takes what fits, or nothing.
                match peer.write(&bytes) {
                    Ok(n) => written.extend_from_slice(&bytes[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("peer write: {e}"),
                }
            }
            1 if read.is_none() => {
                let cap = 1 + usize::from(arg % 8);
                let mut r: Read<'_> = Box::pin(stream.read(Vec::with_capacity(cap)));
                match poll_read(&rt, &mut r, &mut cx) {
                    Poll::Ready(out) => take(out, &mut got),
                    Poll::Pending => read = Some(r),
                }
            }
            2 => {
                if let Some(r) = &mut read
                    && let Poll::Ready(out) = poll_read(&rt, r, &mut cx)
                {
                    read = None;
                    take(out, &mut got);
                }
            }
            3 => drop(read.take()),
            4 if arg % 8 == 0 => stream.enable_multishot_recv().unwrap(),
            _ => rt.block_on(rt::yield_now()),
        }
        assert!(
            written.starts_with(&got),
            "reads returned {got:?}, but {written:?} was written"
        );
    }
    // Everything written is still there to read, in order.
    drop(read);
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < written.len() {
        assert!(
            Instant::now() < deadline,
            "bytes lost: read {} of {} ({got:?} of {written:?})",
            got.len(),
            written.len()
        );
        let out = rt.block_on(ringloop::time::timeout(
            Duration::from_millis(100),
            stream.read(Vec::with_capacity(64)),
        ));
        if let Ok(out) = out {
            take(out, &mut got);
        }
        assert!(written.starts_with(&got), "{got:?} vs {written:?}");
    }
    assert_eq!(got, written);
}

/// The fuzz entry: the first byte picks the ring set-up (odd: plain), the
/// rest is the operation sequence for [`run`].
pub fn check_net_reads(data: &[u8]) {
    let Some((&setup, ops)) = data.split_first() else {
        return;
    };
    run(ops, setup & 1 == 1);
}
