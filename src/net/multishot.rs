//! A stream's receives served by one multishot `RECV` (Linux 6.0) that
//! fills buffers from the loop's pool ([`BufPool`]), instead of one
//! operation per read.
//!
//! Once armed, the kernel receives whenever data arrives and posts a
//! completion naming the buffer it filled; nothing is submitted per read
//! and no poll is armed again. The data waits here, in order, until a read
//! copies it into the caller's buffer and hands the pool buffer back.
//!
//! The completions are handled when the loop reaps them, not by a handler
//! each: they queue in the loop's table of operations (see
//! `reactor::multi_op`) and the reading task is woken, so one iteration
//! serves every stream that received data. A read takes what is queued.
//!
//! Limits, so one stream cannot take the pool: once [`HIGH_WATER`]
//! completions wait unread (in the loop, or taken by the stream and not yet
//! read), the loop cancels the receive, which is armed again only once
//! reads have used up everything received. The kernel may fill a few more
//! buffers before the cancel reaches it (a stream written at full speed and
//! never read holds 33 on Linux 6.18, 48 after a read that left data
//! behind; the same on 6.12). A ring without `DEFER_TASKRUN`
//! (`plain_setup`) gets the cancel at once but the kernel may still fill
//! many more, up to the whole pool (54 in 7 runs of 10, 256 in one), and so
//! may Linux 6.1, which runs the whole backlog of the receive in the enter
//! that carries the cancel (82–189 held in three runs). When the
//! pool runs dry the kernel ends the receive with `ENOBUFS`; reads then
//! fall back to one plain `RECV` into the caller's buffer until buffers
//! are back. A kernel without multishot receives (`EINVAL`) gets plain
//! `RECV`s from then on.
//!
//! The receive holds the socket open (it holds a [`Socket`]); dropping the
//! stream cancels it, the loop hands the buffers of anything still arriving
//! back to the pool, and the fd is closed when the final completion is in.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker, ready};

use io_uring::opcode;

use super::{RecvFuture, Socket};
use crate::reactor::bufpool::{self, BufPool};
use crate::reactor::{Completion, Handle, OpId};

/// Completions waiting unread in the loop at which it cancels a stream's
/// receive.
const HIGH_WATER: usize = 16;

/// A stream's receive side: plain `RECV`s, or one multishot receive once
/// enabled (boxed: a stream that never enables it stays small).
#[derive(Default)]
pub(crate) struct StreamRx(OnceCell<Box<MultiRecv>>);

impl StreamRx {
    /// Serves reads from a multishot receive from now on.
    pub(crate) fn enable_multishot(&self) -> io::Result<()> {
        if self.0.get().is_some() {
            return Ok(());
        }
        let multi = MultiRecv::new().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "multishot receives need a ringloop runtime on this thread \
                 and a kernel with ring-mapped provided buffers (Linux 5.19)",
            )
        })?;
        let _ = self.0.set(Box::new(multi));
        Ok(())
    }

    /// Whether the fd cannot be handed out: a receive is armed or holds
    /// unread data.
    pub(crate) fn busy(&self) -> bool {
        self.0.get().is_some_and(|multi| multi.busy())
    }

    /// Reads once into `buf`'s spare capacity. Like an `async fn`, the
    /// future does nothing until first polled.
    pub(crate) fn read<'a>(&'a self, sock: &'a Socket, buf: Vec<u8>) -> StreamRead<'a> {
        StreamRead::Idle {
            rx: self,
            sock,
            buf: Some(buf),
        }
    }
}

/// A stream's read ([`StreamRx::read`]): a named future, because it is
/// awaited once per message and moved with whatever awaits it; an `async
/// fn` would be three times the size.
pub(crate) enum StreamRead<'a> {
    /// Not polled yet, or waiting for the multishot receive.
    Idle {
        rx: &'a StreamRx,
        sock: &'a Socket,
        buf: Option<Vec<u8>>,
    },
    /// One plain `RECV`.
    Plain(RecvFuture),
}

impl Future for StreamRead<'_> {
    type Output = (io::Result<usize>, Vec<u8>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        const DONE: &str = "StreamRead polled after completion";
        let this = self.get_mut();
        let (sock, buf) = match this {
            StreamRead::Plain(recv) => return Pin::new(recv).poll(cx),
            StreamRead::Idle { rx, sock, buf } => 'idle: {
                let Some(multi) = rx.0.get() else {
                    break 'idle (*sock, buf.take().expect(DONE));
                };
                let b = buf.as_mut().expect(DONE);
                if b.capacity() == b.len() {
                    return Poll::Ready((Err(super::no_spare_capacity()), buf.take().expect(DONE)));
                }
                // What a dropped plain receive got came in before anything
                // the multishot receive holds: wait for it, then read it.
                if sock.must_wait_for_dropped_recv(cx.waker()) {
                    return Poll::Pending;
                }
                if let Some(r) = sock.take_salvaged(b) {
                    return Poll::Ready((r, buf.take().expect(DONE)));
                }
                let fill = ready!(multi.poll_fill(sock, b, cx));
                let b = buf.take().expect(DONE);
                match fill {
                    Fill::Read(n) => return Poll::Ready((Ok(n), b)),
                    Fill::Failed(e) => return Poll::Ready((Err(e), b)),
                    Fill::Plain => break 'idle (*sock, b),
                }
            }
        };
        // `RecvFuture` is `Unpin`: it may move after its first poll.
        let mut recv = sock.recv(buf);
        let poll = Pin::new(&mut recv).poll(cx);
        *this = StreamRead::Plain(recv);
        poll
    }
}

/// A stream's multishot receive; dropping it cancels the receive.
pub(crate) struct MultiRecv(RefCell<Rx>);

struct Rx {
    handle: Handle,
    pool: Rc<BufPool>,
    /// The receive in flight, if armed, and the socket it keeps open.
    armed: Option<(OpId, Socket)>,
    /// The waker of the last task found reading on `handle`'s runtime.
    polled_by: Option<Waker>,
    /// `chunks.len()`, shared with the loop, which counts these against
    /// the receive's limit.
    held: Rc<Cell<usize>>,
    /// Filled buffers not yet read, in order: (buffer id, length, bytes read).
    chunks: VecDeque<(u16, usize, usize)>,
    /// Completions just taken from the loop (kept for its allocation).
    taken: VecDeque<Completion>,
    /// How the stream ended: 0 for end of stream (kept), or `-errno`
    /// (reported once).
    end: Option<i32>,
    /// The last receive ended because the pool was empty.
    starved: bool,
    /// The kernel refused a multishot receive: plain receives from now on.
    unsupported: bool,
}

/// What [`MultiRecv::poll_fill`] found.
enum Fill {
    /// This many bytes were copied into the buffer (0: end of stream).
    Read(usize),
    /// The stream failed.
    Failed(io::Error),
    /// No pool buffer to receive into: do a plain receive instead.
    Plain,
}

impl MultiRecv {
    /// A multishot receive on the current runtime's loop, not armed yet;
    /// `None` without a runtime or without a buffer pool.
    fn new() -> Option<MultiRecv> {
        let handle = crate::rt::current_handle()?;
        let pool = handle.buf_pool()?;
        Some(MultiRecv(RefCell::new(Rx {
            handle,
            pool,
            armed: None,
            polled_by: None,
            held: Rc::new(Cell::new(0)),
            chunks: VecDeque::new(),
            taken: VecDeque::new(),
            end: None,
            starved: false,
            unsupported: false,
        })))
    }

    /// Whether the receive is armed or holds unread data: the fd cannot be
    /// handed out then.
    fn busy(&self) -> bool {
        let rx = self.0.borrow();
        rx.armed.is_some() || !rx.chunks.is_empty()
    }

    /// Copies received data into `buf`'s spare capacity, or arms the
    /// receive and registers the waker.
    fn poll_fill(&self, sock: &Socket, buf: &mut Vec<u8>, cx: &mut Context<'_>) -> Poll<Fill> {
        let mut rx = self.0.borrow_mut();
        let mut just_armed = false;
        loop {
            if !rx.chunks.is_empty() {
                return Poll::Ready(Fill::Read(rx.copy_into(buf)));
            }
            if let Some(end) = rx.end {
                if end != 0 {
                    rx.end = None;
                }
                return Poll::Ready(match end {
                    0 => Fill::Read(0),
                    e => Fill::Failed(io::Error::from_raw_os_error(-e)),
                });
            }
            let Some((id, _)) = rx.armed else {
                // Nothing of the stream's is in the loop it was enabled
                // on: read on the current runtime's loop, as a plain
                // receive would (the first loop may be gone or idle).
                if crate::rt::current_loop_is(&rx.handle) == Some(false)
                    && let Some(current) = crate::rt::current_handle()
                {
                    let Some(pool) = current.buf_pool() else {
                        return Poll::Ready(Fill::Plain);
                    };
                    rx.handle = current;
                    rx.polled_by = None;
                    rx.pool = pool;
                    rx.starved = false;
                }
                if rx.unsupported || (rx.starved && rx.pool.available() == 0) {
                    return Poll::Ready(Fill::Plain);
                }
                rx.starved = false;
                if let Err(e) = rx.arm(sock) {
                    return Poll::Ready(Fill::Failed(e));
                }
                just_armed = true;
                continue;
            };
            // Checked once per task (a task never leaves its runtime), not
            // per read: for a waker that is no runtime task's, the check
            // looks the current runtime up (~60 instructions).
            if !rx
                .polled_by
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                // Its completions come to that loop, which is not running
                // this read (a task of another runtime polls it, or another
                // executor while no runtime runs): waiting here would hang.
                // They stay there for a read on that runtime.
                if let Some(e) = not_served_by(&rx.handle, cx.waker()) {
                    return Poll::Ready(Fill::Failed(e));
                }
                rx.polled_by = Some(cx.waker().clone());
            }
            let mut taken = std::mem::take(&mut rx.taken);
            if rx
                .handle
                .poll_multi_task_op(id, cx.waker(), &mut taken)
                .is_pending()
            {
                rx.taken = taken;
                return Poll::Pending;
            }
            if taken.is_empty() {
                // The loop no longer knows the receive: it is gone.
                rx.armed = None;
                if just_armed {
                    return Poll::Ready(Fill::Failed(io::Error::other(
                        "the event loop lost the receive",
                    )));
                }
            }
            for c in taken.drain(..) {
                rx.on_completion(c);
            }
            rx.taken = taken;
        }
    }
}

/// The error of a read of a receive armed on `handle`'s loop, polled with
/// `waker` where that loop does not run, if it is (see
/// [`MultiRecv::poll_fill`]). Out of line: a check once per new waker.
#[cold]
#[inline(never)]
fn not_served_by(handle: &Handle, waker: &Waker) -> Option<io::Error> {
    let err = match crate::rt::polled_by_live(handle, waker) {
        crate::rt::PolledBy::ItsRuntime => return None,
        crate::rt::PolledBy::Another(_) => {
            "the stream's multishot receive is armed on another runtime's loop; \
             read it there, or once that receive has ended"
        }
        crate::rt::PolledBy::NoRuntime => {
            "no ringloop runtime runs this wait: the stream's multishot receive is armed on a \
             runtime's loop, and another executor reads it while no runtime of this thread runs \
             block_on, so nothing would bring its data; read it inside that runtime's \
             Runtime::block_on or one of its tasks"
        }
    };
    Some(io::Error::other(err))
}

impl Rx {
    fn arm(&mut self, sock: &Socket) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(sock.fd(), bufpool::GROUP).build();
        // SAFETY: the entry points at no memory of ours: the kernel picks
        // buffers from the pool, which the loop keeps alive. `armed` keeps
        // the socket's fd open, and so does the release if the stream is
        // dropped first.
        let id = unsafe {
            self.handle
                .submit_multi_task_op(entry, HIGH_WATER, self.held.clone())
        }
        .map_err(io::Error::other)?;
        self.armed = Some((id, sock.clone()));
        Ok(())
    }

    /// One completion of the receive: queue the data, note how it ended.
    fn on_completion(&mut self, c: Completion) {
        // The loop took the buffer out of the pool when it reaped this.
        if let Some(bid) = self.pool.buffer_id(c.flags) {
            match usize::try_from(c.result) {
                Ok(len) if len > 0 => self
                    .chunks
                    .push_back((bid, len.min(self.pool.buf_len()), 0)),
                _ => self.pool.recycle(bid),
            }
            self.held.set(self.chunks.len());
        }
        if c.has_more() {
            return;
        }
        self.armed = None;
        match c.result {
            0 => self.end = Some(0),
            r if r > 0 => {}
            r if r == -libc::ENOBUFS => self.starved = true,
            // The loop cancelled it: HIGH_WATER completions were unread.
            r if r == -libc::ECANCELED => {}
            r if r == -libc::EINVAL && self.chunks.is_empty() => self.unsupported = true,
            r => self.end = Some(r),
        }
    }

    /// Copies queued data into `buf`'s spare capacity, recycling every
    /// buffer read to its end.
    fn copy_into(&mut self, buf: &mut Vec<u8>) -> usize {
        let mut copied = 0;
        while let Some((bid, len, read)) = self.chunks.front_mut() {
            let spare = buf.capacity() - buf.len();
            if spare == 0 {
                break;
            }
            let n = spare.min(*len - *read);
            buf.extend_from_slice(&self.pool.bytes(*bid, *len)[*read..*read + n]);
            *read += n;
            copied += n;
            if *read == *len {
                let bid = *bid;
                self.chunks.pop_front();
                self.pool.recycle(bid);
            }
        }
        self.held.set(self.chunks.len());
        copied
    }
}

impl Drop for MultiRecv {
    fn drop(&mut self) {
        let rx = self.0.get_mut();
        if let Some((id, sock)) = rx.armed.take() {
            // The fd closes when the kernel hands the receive back.
            rx.handle
                .detach_multi_task_op(id, Box::new(move |_| drop(sock)));
        }
    }
}

impl Drop for Rx {
    fn drop(&mut self) {
        for (bid, _, _) in self.chunks.drain(..) {
            self.pool.recycle(bid);
        }
    }
}
