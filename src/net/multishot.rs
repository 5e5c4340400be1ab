//! A stream's receives served by one multishot `RECV` (Linux 6.0) that
//! fills buffers from the loop's pool ([`BufPool`]), instead of one
//! operation per read.
//!
//! Once armed, the kernel receives whenever data arrives and posts a
//! completion naming the buffer it filled; nothing is submitted per read
//! and no poll is armed again. The data waits here, in order, until a read
//! copies it into the caller's buffer and hands the pool buffer back.
//!
//! Limits, so one stream cannot take the pool: a stream that has
//! [`HIGH_WATER`] buffers unread cancels its receive and arms it again only
//! once a read finds nothing left. When the pool runs dry the kernel ends
//! the receive with `ENOBUFS`; reads then fall back to one plain `RECV`
//! into the caller's buffer until buffers are back. A kernel without
//! multishot receives (`EINVAL`) gets plain `RECV`s from then on.
//!
//! The receive holds the socket open (it holds a [`Socket`]); dropping the
//! stream cancels it, and the fd is closed when its last completion is in.

use std::cell::{OnceCell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::opcode;

use super::Socket;
use crate::reactor::bufpool::{self, BufPool};
use crate::reactor::{Completion, Handle, OpId};

/// Unread buffers at which a stream's receive is cancelled.
const HIGH_WATER: usize = 16;

/// A stream's receive side: plain `RECV`s, or one multishot receive once
/// enabled.
#[derive(Default)]
pub(crate) struct StreamRx(OnceCell<MultiRecv>);

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
        let _ = self.0.set(multi);
        Ok(())
    }

    /// Whether the fd cannot be handed out: a receive is armed or holds
    /// unread data.
    pub(crate) fn busy(&self) -> bool {
        self.0.get().is_some_and(MultiRecv::busy)
    }

    /// Reads once into `buf`'s spare capacity.
    pub(crate) async fn read(
        &self,
        sock: &Socket,
        mut buf: Vec<u8>,
    ) -> (io::Result<usize>, Vec<u8>) {
        let Some(multi) = self.0.get() else {
            return sock.recv(buf).await;
        };
        if buf.capacity() == buf.len() {
            return (Err(super::no_spare_capacity()), buf);
        }
        match std::future::poll_fn(|cx| multi.poll_fill(sock, &mut buf, cx)).await {
            Fill::Read(n) => (Ok(n), buf),
            Fill::Failed(e) => (Err(e), buf),
            Fill::Plain => sock.recv(buf).await,
        }
    }
}

/// A stream's multishot receive; dropping it cancels the receive.
pub(crate) struct MultiRecv(Rc<RefCell<Rx>>);

struct Rx {
    handle: Handle,
    pool: Rc<BufPool>,
    /// The receive in flight, if armed.
    armed: Option<OpId>,
    /// A cancel was sent for `armed` (high water, or the stream dropped).
    cancelling: bool,
    /// Filled buffers not yet read, in order: (buffer id, length, bytes read).
    chunks: VecDeque<(u16, usize, usize)>,
    /// How the stream ended: 0 for end of stream (kept), or `-errno`
    /// (reported once).
    end: Option<i32>,
    /// The last receive ended because the pool was empty.
    starved: bool,
    /// The kernel refused a multishot receive: plain receives from now on.
    unsupported: bool,
    /// Reads waiting for data (several tasks may read one stream).
    wakers: Vec<Waker>,
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
        Some(MultiRecv(Rc::new(RefCell::new(Rx {
            handle,
            pool,
            armed: None,
            cancelling: false,
            chunks: VecDeque::new(),
            end: None,
            starved: false,
            unsupported: false,
            wakers: Vec::new(),
        }))))
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
        if rx.armed.is_none() {
            if rx.unsupported || (rx.starved && rx.pool.available() == 0) {
                return Poll::Ready(Fill::Plain);
            }
            rx.starved = false;
            if let Err(e) = self.arm(&mut rx, sock) {
                return Poll::Ready(Fill::Failed(e));
            }
        }
        if !rx.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            rx.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn arm(&self, rx: &mut Rx, sock: &Socket) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(sock.fd(), bufpool::GROUP).build();
        let state = self.0.clone();
        let sock = sock.clone();
        // SAFETY: the entry points at no memory of ours: the kernel picks
        // buffers from the pool, which the callback (and the loop) keeps
        // alive. The callback also keeps the socket's fd open.
        let id = unsafe {
            rx.handle
                .submit_multishot(entry, move |h: &Handle, c: Completion| {
                    let _fd_stays_open = &sock;
                    Rx::on_completion(&state, h, c);
                })
        }
        .map_err(io::Error::other)?;
        rx.armed = Some(id);
        rx.cancelling = false;
        Ok(())
    }
}

impl Rx {
    /// One completion of the receive: queue the data, note how it ended,
    /// wake the readers.
    fn on_completion(state: &Rc<RefCell<Rx>>, h: &Handle, c: Completion) {
        let mut rx = state.borrow_mut();
        if let Some(bid) = rx.pool.take(c.flags) {
            match usize::try_from(c.result) {
                Ok(len) if len > 0 => rx.chunks.push_back((bid, len.min(bufpool::BUF_LEN), 0)),
                _ => rx.pool.recycle(bid),
            }
        }
        let mut cancel = None;
        if !c.has_more() {
            rx.armed = None;
            match c.result {
                0 => rx.end = Some(0),
                r if r > 0 => {}
                r if r == -libc::ENOBUFS => rx.starved = true,
                r if r == -libc::ECANCELED && rx.cancelling => {}
                r if r == -libc::EINVAL && rx.chunks.is_empty() => rx.unsupported = true,
                r => rx.end = Some(r),
            }
            rx.cancelling = false;
        } else if rx.chunks.len() >= HIGH_WATER && !rx.cancelling {
            rx.cancelling = true;
            cancel = rx.armed;
        }
        let wakers = std::mem::take(&mut rx.wakers);
        drop(rx);
        if let Some(id) = cancel {
            // Fails only if the loop is going away, which cancels it anyway.
            let _ = h.cancel_op(id);
        }
        for w in wakers {
            w.wake();
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
        copied
    }
}

impl Drop for MultiRecv {
    fn drop(&mut self) {
        let (handle, armed) = {
            let mut rx = self.0.borrow_mut();
            rx.cancelling = true;
            (rx.handle.clone(), rx.armed)
        };
        if let Some(id) = armed {
            // Fails only if the loop is gone, and the receive with it.
            let _ = handle.cancel_op(id);
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
