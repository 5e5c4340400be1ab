//! Property test of futures' io_uring operations (`op::submit`): random
//! sequences of submitting, polling, dropping, feeding pipes, turning the
//! loop and dropping the runtime. Checked: no wake-up is lost (a future that
//! was pending is woken before it turns ready), a NOP resolves after one
//! loop turn, a read returns only bytes that were written, every operation
//! still alive when the loop goes resolves with the completion the loop saw,
//! and every operation's resources are released exactly once. The case count
//! comes from `PROPTEST_CASES` (default 256).

use std::future::Future;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, types::Fd};
use proptest::prelude::*;
use ringloop::op::Op;
use ringloop::rt::{self, Runtime};

const PIPES: usize = 3;
const READ_LEN: usize = 4;

/// Counts its wakes.
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// What an operation owns: its buffer and a marker whose count tells
/// whether the resources were released.
type Res = (Vec<u8>, Rc<()>);

struct Live {
    op: Op<Res>,
    is_nop: bool,
    /// Loop turns since submission.
    turns: usize,
    waker: Option<Arc<CountingWaker>>,
}

struct Harness {
    rt: Option<Runtime>,
    readers: Vec<OwnedFd>,
    writers: Vec<std::io::PipeWriter>,
    marker: Rc<()>,
    live: Vec<Live>,
    written: usize,
    read: usize,
    /// Reads submitted per pipe, dropped ones included.
    reads_on: [usize; PIPES],
}

impl Harness {
    fn new() -> Harness {
        let (readers, writers) = (0..PIPES)
            .map(|_| {
                let (r, w) = std::io::pipe().unwrap();
                (OwnedFd::from(r), w)
            })
            .unzip();
        Harness {
            rt: Some(Runtime::new().unwrap()),
            readers,
            writers,
            marker: Rc::new(()),
            live: Vec::new(),
            written: 0,
            read: 0,
            reads_on: [0; PIPES],
        }
    }

    fn submit(&mut self, arg: u8) {
        let is_nop = arg % (PIPES as u8 + 1) == PIPES as u8;
        let mut buf = vec![0u8; READ_LEN];
        let entry = if is_nop {
            opcode::Nop::new().build()
        } else {
            let pipe = usize::from(arg) % PIPES;
            self.reads_on[pipe] += 1;
            let fd = self.readers[pipe].as_raw_fd();
            opcode::Read::new(Fd(fd), buf.as_mut_ptr(), READ_LEN as u32)
                .offset(u64::MAX)
                .build()
        };
        // SAFETY: the buffer's heap data is owned by the operation and does
        // not move with it; the pipes outlive every operation (they are
        // dropped last).
        let op = unsafe { ringloop::op::submit(entry, (buf, self.marker.clone())) };
        self.live.push(Live {
            op,
            is_nop,
            turns: 0,
            waker: None,
        });
    }

    /// Polls operation `i`; checks a resolved one and forgets it.
    fn poll(&mut self, i: usize) {
        if self.live.is_empty() {
            return;
        }
        let i = i % self.live.len();
        let l = &mut self.live[i];
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let w = Waker::from(waker.clone());
        let mut cx = Context::from_waker(&w);
        // Inside the runtime's `block_on` while it lives (polled at once,
        // no loop turn taken for it): polled with a waker of its own while
        // no runtime runs, an operation would belong to another executor,
        // which nothing serves, and be cancelled at once.
        let polled = match &self.rt {
            Some(rt) => rt.block_on(std::future::poll_fn(|_| {
                Poll::Ready(Pin::new(&mut l.op).poll(&mut cx))
            })),
            None => Pin::new(&mut l.op).poll(&mut cx),
        };
        match polled {
            Poll::Pending => {
                assert!(
                    !(l.is_nop && l.turns > 0 && self.rt.is_some()),
                    "a NOP still pending after a loop turn"
                );
                l.waker = Some(waker);
            }
            Poll::Ready((c, (buf, _marker))) => {
                if let Some(old) = &l.waker {
                    assert!(
                        old.0.load(Ordering::SeqCst) > 0 || self.rt.is_none(),
                        "a pending operation turned ready without a wake"
                    );
                }
                if l.is_nop {
                    assert!(c.result == 0 || c.result == -libc::ECANCELED, "{c:?}");
                } else if c.result >= 0 {
                    self.read += c.result as usize;
                    assert!(c.result as usize <= READ_LEN);
                    assert!(buf[..c.result as usize].iter().all(|&b| b == b'x'));
                } else {
                    // A read an io-wq worker was blocked in (before Linux
                    // 6.5) is interrupted rather than cancelled.
                    assert!(
                        [-libc::ECANCELED, -libc::EINTR].contains(&c.result),
                        "{c:?}"
                    );
                    assert!(self.rt.is_none(), "only teardown cancels");
                }
                assert!(self.read <= self.written, "read bytes nobody wrote");
                self.live.swap_remove(i);
            }
        }
    }

    fn turn(&mut self) {
        if let Some(rt) = &self.rt {
            rt.block_on(rt::yield_now());
            for l in &mut self.live {
                l.turns += 1;
            }
        }
    }

    fn run(&mut self, data: &[u8]) {
        for pair in data.chunks(2) {
            let (what, arg) = (pair[0] % 6, pair.get(1).copied().unwrap_or(0));
            match what {
                0 | 1 if self.rt.is_some() => self.submit(arg),
                2 => self.poll(usize::from(arg)),
                3 if !self.live.is_empty() => {
                    let i = usize::from(arg) % self.live.len();
                    drop(self.live.swap_remove(i));
                }
                4 => {
                    let n = 1 + usize::from(arg) % 6;
                    self.writers[usize::from(arg) % PIPES]
                        .write_all(&vec![b'x'; n])
                        .unwrap();
                    self.written += n;
                }
                5 if arg == 255 => drop(self.rt.take()),
                _ => self.turn(),
            }
        }
        // Every read still waiting gets its bytes, so everything resolves: as
        // many as every read ever submitted on the pipe could take, since a
        // dropped read whose cancel has not reached the kernel yet can still
        // take some. Before Linux 6.5 a pipe read that must wait goes to an io-wq
        // worker thread and completes from there, so this waits (briefly,
        // in the loop) rather than assuming one turn is enough.
        if self.rt.is_some() {
            for (w, reads) in self.writers.iter_mut().zip(self.reads_on) {
                w.write_all(&vec![b'x'; READ_LEN * reads]).unwrap();
                self.written += READ_LEN * reads;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.live.is_empty() {
                if let Some(rt) = &self.rt {
                    rt.block_on(ringloop::time::sleep(Duration::from_millis(1)));
                }
                let pending = self.live.len();
                for i in (0..pending).rev() {
                    self.poll(i);
                }
                assert!(Instant::now() < deadline, "an operation never resolved");
            }
        }
        drop(self.rt.take());
        // After teardown every operation it settled resolves.
        while !self.live.is_empty() {
            let before = self.live.len();
            self.poll(0);
            assert!(
                self.live.len() < before,
                "an operation the loop settled at teardown never resolved"
            );
        }
        assert_eq!(
            Rc::strong_count(&self.marker),
            1,
            "every operation's resources are released"
        );
    }
}

proptest! {
    #[test]
    fn op_futures_resolve_and_release(data in prop::collection::vec(any::<u8>(), 0..200)) {
        Harness::new().run(&data);
    }
}

/// Dropped while in flight, dropped after completing unread, polled after
/// the runtime is gone: the paths a drop can take.
#[test]
fn hand_written_case() {
    Harness::new().run(&[
        0, 0, // read on pipe 0
        0, 3, // NOP
        0, 1, // read on pipe 1
        5, 0, // turn: the NOP completes
        3, 1, // drop the NOP unread (or a read)
        4, 0, // write to pipe 0
        2, 0, // poll
        3, 0, // drop one in flight
        5, 255, // drop the runtime
        2, 0, // poll after teardown
    ]);
}
