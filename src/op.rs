//! Raw io_uring operations as futures: the async face of [`Handle::submit`].
//!
//! A library that knows io_uring can build any SQE with `io_uring::opcode`
//! and await its completion with [`submit`]; the types in [`net`](crate::net)
//! and [`fs`](crate::fs) are built the same way.
//!
//! The resources the operation points at (buffers, address structs, the fd's
//! owner) are moved into the operation and handed back with the completion.
//! If the future is dropped first, the operation is cancelled
//! ([`Handle::cancel_op`]) and the resources stay with the loop until the
//! kernel has completed it, so the kernel never writes into freed memory.
//!
//! ```
//! use ringloop::{op, rt};
//! use io_uring::opcode;
//! rt::block_on(async {
//!     let buf = b"hello\n".to_vec();
//!     let entry = opcode::Write::new(io_uring::types::Fd(1), buf.as_ptr(), buf.len() as u32)
//!         .offset(u64::MAX)
//!         .build();
//!     // SAFETY: `buf` is moved into the operation and its heap buffer does
//!     // not move with it.
//!     let (completion, buf) = unsafe { op::submit(entry, buf) }.await;
//!     assert_eq!(completion.result().unwrap() as usize, buf.len());
//! });
//! ```

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::squeue;

use crate::reactor::{Completion, Handle, OpId};
use crate::rt;

/// What to do with a completion nobody will read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Orphan {
    /// Nothing: the resources are dropped.
    Drop,
    /// The result is a new fd (accept, openat): close it.
    CloseFd,
}

impl Orphan {
    fn clean_up(self, c: &Completion) {
        if self == Orphan::CloseFd && c.result >= 0 {
            // SAFETY: the kernel just created this fd for an operation whose
            // future is gone: nobody else knows its number.
            drop(unsafe { OwnedFd::from_raw_fd(c.result) });
        }
    }
}

struct Slot<T> {
    /// The resources while the kernel may use them; the callback moves them
    /// into `done`, and a failed submission hands them straight back.
    carried: Option<T>,
    done: Option<(Completion, T)>,
    waker: Option<Waker>,
    /// The future is gone: clean up on completion.
    dropped: bool,
}

enum State<T> {
    InFlight {
        handle: Handle,
        id: OpId,
        slot: Rc<RefCell<Slot<T>>>,
    },
    /// Submission failed; the resources come straight back.
    Failed(Option<(io::Error, T)>),
    Finished,
}

/// An io_uring operation in flight; resolves to its [`Completion`] and the
/// resources given to [`submit`]. Dropping it cancels the operation.
#[must_use = "the operation is cancelled when this future is dropped"]
pub struct Op<T: 'static> {
    state: State<T>,
    orphan: Orphan,
}

impl<T: 'static> Unpin for Op<T> {}

/// Submits `entry` on the current runtime's loop and awaits its completion.
/// `resources` come back with the completion.
///
/// If the operation cannot be submitted (no runtime on this thread, or the
/// ring refused it), the future resolves at once with a completion holding
/// `-ECANCELED` (no runtime) or the submission's errno.
///
/// # Safety
/// Everything the entry points to must be owned by `resources` (and not move
/// when `resources` is moved, as a `Vec`'s or `Box`'s heap data does not), or
/// otherwise stay valid until the operation completes, also when the future
/// is dropped early. The entry must not carry `IOSQE_CQE_SKIP_SUCCESS`.
pub unsafe fn submit<T: 'static>(entry: squeue::Entry, resources: T) -> Op<T> {
    // SAFETY: forwarded from the caller.
    unsafe { Op::submit(entry, resources, Orphan::Drop) }
}

impl<T: 'static> Op<T> {
    /// Submits on the current runtime; see [`submit`].
    ///
    /// # Safety
    /// As for [`submit`].
    pub(crate) unsafe fn submit(entry: squeue::Entry, resources: T, orphan: Orphan) -> Op<T> {
        let Some(handle) = rt::current_handle() else {
            return Op::failed(no_runtime(), resources, orphan);
        };
        let slot = Rc::new(RefCell::new(Slot {
            carried: Some(resources),
            done: None,
            waker: None,
            dropped: false,
        }));
        let cb_slot = slot.clone();
        let callback = move |_: &Handle, c: Completion| {
            let mut slot = cb_slot.borrow_mut();
            let res = slot.carried.take();
            if slot.dropped {
                drop(slot);
                orphan.clean_up(&c);
                drop(res);
                return;
            }
            if let Some(res) = res {
                slot.done = Some((c, res));
            }
            let waker = slot.waker.take();
            drop(slot);
            if let Some(w) = waker {
                w.wake();
            }
        };
        // SAFETY: forwarded from the caller; the callback owns the resources
        // until the completion.
        match unsafe { handle.submit(entry, callback) } {
            Ok(id) => Op {
                state: State::InFlight { handle, id, slot },
                orphan,
            },
            Err(e) => {
                let res = slot.borrow_mut().carried.take();
                match res {
                    Some(res) => Op::failed(e.into(), res, orphan),
                    None => Op {
                        state: State::Finished,
                        orphan,
                    },
                }
            }
        }
    }

    fn failed(e: io::Error, resources: T, orphan: Orphan) -> Op<T> {
        Op {
            state: State::Failed(Some((e, resources))),
            orphan,
        }
    }

    /// Polls for the outcome, keeping a submission failure as an `io::Error`.
    pub(crate) fn poll_result(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<(io::Result<Completion>, T)> {
        match &mut self.state {
            State::InFlight { slot, .. } => {
                let mut s = slot.borrow_mut();
                if let Some((c, res)) = s.done.take() {
                    drop(s);
                    self.state = State::Finished;
                    return Poll::Ready((Ok(c), res));
                }
                match &s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Failed(f) => match f.take() {
                Some((e, res)) => {
                    self.state = State::Finished;
                    Poll::Ready((Err(e), res))
                }
                None => panic!("ringloop::op::Op polled after completion"),
            },
            State::Finished => panic!("ringloop::op::Op polled after completion"),
        }
    }

    /// Awaits the outcome as `(io::Result<result>, resources)`.
    pub(crate) async fn result(mut self) -> (io::Result<u32>, T) {
        let (c, res) = std::future::poll_fn(|cx| self.poll_result(cx)).await;
        (c.and_then(|c| c.result()), res)
    }
}

/// The error of an operation started with no runtime on the thread.
pub(crate) fn no_runtime() -> io::Error {
    io::Error::other("no ringloop runtime on this thread (use ringloop::rt::block_on)")
}

impl<T: 'static> Future for Op<T> {
    type Output = (Completion, T);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_result(cx).map(|(r, res)| {
            let c = r.unwrap_or_else(|e| Completion {
                result: -e.raw_os_error().unwrap_or(libc::ECANCELED),
                flags: 0,
            });
            (c, res)
        })
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        if let State::InFlight { handle, id, slot } = &self.state {
            let finished = {
                let Ok(mut s) = slot.try_borrow_mut() else {
                    return;
                };
                match s.done.take() {
                    Some(done) => Some(done),
                    None => {
                        s.dropped = true;
                        None
                    }
                }
            };
            match finished {
                // Completed but never read: release what it produced.
                Some((c, res)) => {
                    self.orphan.clean_up(&c);
                    drop(res);
                }
                // NotFound: it completed and its callback is queued; the
                // callback sees `dropped` and cleans up.
                None => {
                    let _ = handle.cancel_op(*id);
                }
            }
        }
    }
}

impl<T: 'static> fmt::Debug for Op<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::InFlight { .. } => "in flight",
            State::Failed(_) => "failed",
            State::Finished => "finished",
        };
        f.debug_struct("Op").field("state", &state).finish()
    }
}
