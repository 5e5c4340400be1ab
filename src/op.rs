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

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use io_uring::squeue;

use crate::reactor::{Completion, Handle, OpId, TaskPoll};
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
        // A zero-copy send's notification carries no fd.
        if self == Orphan::CloseFd && c.result >= 0 && !io_uring::cqueue::notif(c.flags) {
            // SAFETY: the kernel just created this fd for an operation whose
            // future is gone: nobody else knows its number.
            drop(unsafe { OwnedFd::from_raw_fd(c.result) });
        }
    }
}

enum State<T> {
    /// The resources are `Some` until the future resolves.
    InFlight {
        handle: Handle,
        id: OpId,
        resources: Option<T>,
        /// Polled where its loop does not run (see [`Op::poll_result`]):
        /// the operation was cancelled on its own loop, and each poll gives
        /// that loop's kernel a turn until it is back.
        settling: bool,
    },
    /// Submission failed; the resources come straight back.
    Failed(Option<(io::Error, T)>),
    Finished,
}

/// An io_uring operation in flight; resolves to its [`Completion`] and the
/// resources given to [`submit`]. Dropping it cancels the operation.
/// Polled by a task of another runtime than the one it was submitted on, or
/// by another executor while no runtime runs, it cancels the operation and
/// resolves with that (see [`submit`]).
///
/// The completion waits in the loop's table of operations until the future
/// takes it, and the resources stay in the future: an operation costs no
/// allocation of its own. If the future is dropped first, the resources move
/// to the loop until the kernel is done with them.
#[must_use = "the operation is cancelled when this future is dropped"]
pub struct Op<T: 'static> {
    state: State<T>,
    orphan: Orphan,
    /// Given the final completion and the resources when the future was
    /// dropped first, instead of dropping them: what a receive brought in
    /// after all is kept for the next read ([`Op::salvage_with`]).
    salvage: Option<fn(Completion, T)>,
}

impl<T: 'static> Unpin for Op<T> {}

/// Submits `entry` on the current runtime's loop and awaits its completion.
/// `resources` come back with the completion.
///
/// If the operation cannot be submitted (no runtime on this thread, or the
/// ring refused it), the future resolves at once with a completion holding
/// `-ECANCELED` (no runtime) or the submission's errno.
///
/// An operation still in flight when its loop is dropped is cancelled and
/// waited for; its future then resolves with that completion. Should the
/// kernel not give it back (the loop waits 5 s), the future never resolves
/// and its resources are leaked rather than freed under the kernel.
///
/// The operation belongs to the loop it was submitted on. Awaited by a task
/// of another runtime of the thread while that loop is alive but not
/// running (which would otherwise never reap it), the future cancels it
/// there at once and resolves with its completion: `-ECANCELED` if it had
/// done nothing (submit it again on this runtime), or the result it reached
/// first, so nothing is lost. Only an operation the kernel cannot
/// interrupt (a regular file's read on a worker thread) takes longer: the
/// task is polled again at each turn of its runtime until it is back.
/// Polled through a combinator's waker inside a task of its own runtime,
/// while that runtime runs, it waits as usual.
///
/// # Errors
/// The same goes for an operation awaited by another executor
/// (`futures::executor::block_on`, a waker that is no runtime task's)
/// while no runtime of the thread runs `block_on`, which nothing would
/// reap while that executor waits: it is cancelled on its loop at once and
/// resolves with `-ECANCELED`, or the result it reached first (the
/// executor is woken at once while the kernel finishes one it cannot
/// interrupt). A single such poll (`now_or_never`) of an unfinished
/// operation cancels it too, and so does an executor of one's own that
/// drives the loop with [`Handle::run_once`] outside `block_on`: submit
/// with [`Handle::submit`] there. The crate's own sockets and files give
/// an error that says so instead of `-ECANCELED` (not `Interrupted`: doing
/// it again there would fail again).
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

/// [`submit`] for an operation whose result is a new fd (`ACCEPT`,
/// `OPENAT`, `SOCKET`, ...): if the future is dropped before it resolves
/// and the kernel creates the fd anyway (the cancel came too late), the
/// loop closes that fd instead of leaking it. A future that resolves hands
/// the fd to its caller, who must close it, as with [`submit`].
///
/// # Safety
/// As for [`submit`]; and a non-negative result of the operation must be a
/// new fd that nothing else owns: the loop closes it.
pub unsafe fn submit_fd<T: 'static>(entry: squeue::Entry, resources: T) -> Op<T> {
    // SAFETY: forwarded from the caller, who vouches that the result is an fd.
    unsafe { Op::submit(entry, resources, Orphan::CloseFd) }
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
        // SAFETY: forwarded from the caller; the resources stay in this
        // future, or go to the loop if it is dropped, until the completion.
        // The later results of an operation that posts several are nobody's.
        let surplus: Option<fn(&Completion)> = match orphan {
            Orphan::Drop => None,
            Orphan::CloseFd => Some(|c| Orphan::CloseFd.clean_up(c)),
        };
        match unsafe { handle.submit_task_op(entry, surplus) } {
            Ok(id) => Op {
                state: State::InFlight {
                    handle,
                    id,
                    resources: Some(resources),
                    settling: false,
                },
                orphan,
                salvage: None,
            },
            Err(e) => Op::failed(e.into(), resources, orphan),
        }
    }

    fn failed(e: io::Error, resources: T, orphan: Orphan) -> Op<T> {
        Op {
            state: State::Failed(Some((e, resources))),
            orphan,
            salvage: None,
        }
    }

    /// If this future is dropped before it resolves, `salvage` gets the
    /// final completion and the resources once the kernel is done (after
    /// the [`Orphan`] clean-up), instead of their being dropped. It runs on
    /// the loop's thread, outside any handler, possibly after the loop has
    /// gone.
    pub(crate) fn salvage_with(mut self, salvage: fn(Completion, T)) -> Op<T> {
        self.salvage = Some(salvage);
        self
    }

    /// The loop the operation is in and its resources, while it is in the
    /// kernel (submitted, not yet resolved).
    pub(crate) fn in_flight_resources(&self) -> Option<(&Handle, &T)> {
        match &self.state {
            State::InFlight {
                handle, resources, ..
            } => resources.as_ref().map(|r| (handle, r)),
            _ => None,
        }
    }

    /// Polls for the outcome, keeping a submission failure as an `io::Error`.
    pub(crate) fn poll_result(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<(io::Result<Completion>, T)> {
        match &mut self.state {
            State::InFlight {
                handle,
                id,
                resources,
                settling,
            } => {
                let c = std::task::ready!(poll_in_flight(handle, *id, settling, cx));
                let moved = *settling && c.result == -libc::ECANCELED;
                let res = resources.take();
                if moved {
                    return self.finish_settled(res, cx.waker());
                }
                self.state = State::Finished;
                match res {
                    Some(res) => Poll::Ready((Ok(c), res)),
                    None => panic!("ringloop::op::Op polled after completion"),
                }
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

    /// Resolves an operation settled where its loop does not run that was
    /// cancelled having done nothing: with an error that says why, not a
    /// bare `ECANCELED` (see [`settled_error`]).
    #[cold]
    fn finish_settled(
        &mut self,
        res: Option<T>,
        waker: &std::task::Waker,
    ) -> Poll<(io::Result<Completion>, T)> {
        let e = match &self.state {
            State::InFlight { handle, .. } => settled_error(handle, waker),
            _ => moved_error(),
        };
        self.state = State::Finished;
        match res {
            Some(res) => Poll::Ready((Err(e), res)),
            None => panic!("ringloop::op::Op polled after completion"),
        }
    }

    /// Awaits the outcome as `(io::Result<result>, resources)`.
    pub(crate) async fn result(mut self) -> (io::Result<u32>, T) {
        let (c, res) = std::future::poll_fn(|cx| self.poll_result(cx)).await;
        (c.and_then(|c| c.result()), res)
    }
}

/// The completion of operation `id`, in flight on `handle`'s loop. Polled
/// where that loop does not run (by a task of another runtime of the
/// thread while that loop is idle, or by another executor while no runtime
/// runs), it sets `settling` and settles the operation there instead of
/// waiting.
#[inline]
fn poll_in_flight(
    handle: &Handle,
    id: OpId,
    settling: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Completion> {
    if !*settling {
        match handle.poll_task_op(id, cx.waker()) {
            TaskPoll::Ready(c) => return Poll::Ready(c),
            TaskPoll::Pending { new_waker: false } => return Poll::Pending,
            // Checked once per waker (a task never leaves its runtime), not
            // per poll. A task of another runtime of the thread polls it
            // while its loop is idle, or another executor while no runtime
            // runs: only running that loop would reap the completion, so
            // waiting here would hang. The operation is cancelled there and
            // handed back now, with what it got.
            TaskPoll::Pending { new_waker: true } => {
                if let rt::PolledBy::ItsRuntime = rt::polled_by_live(handle, cx.waker()) {
                    return Poll::Pending;
                }
                *settling = true;
            }
        }
    }
    let c = handle.settle_task_op_now(id, cx.waker());
    if c.is_pending() && handle.is_alive() {
        // The kernel cannot give it back yet (an operation it cannot
        // interrupt): try again after this runtime's next turn, rather
        // than wait for a wake that only the idle loop would deliver.
        // (Once the loop is gone, teardown has settled it or never will:
        // no point spinning.)
        cx.waker().wake_by_ref();
    }
    c
}

/// The error of an operation on `handle`'s loop, settled because it was
/// polled with `waker` where that loop does not run, and cancelled having
/// done nothing: who polls it says which ([`moved_error`] for a task of
/// another runtime, [`unserved_error`] for another executor while no
/// runtime runs). Asked again here, off the hot path, rather than kept.
fn settled_error(handle: &Handle, waker: &std::task::Waker) -> io::Error {
    match rt::polled_by(handle, waker) {
        rt::PolledBy::NoRuntime => unserved_error(),
        _ => moved_error(),
    }
}

/// The error of an operation cancelled because a task of another runtime
/// awaited it (see [`submit`]).
pub(crate) fn moved_error() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, Moved)
}

/// Whether `e` is [`moved_error`]'s, not an `EINTR` or any other
/// `Interrupted`: for a future that can start its operation again itself
/// (a connect, whose socket is its own).
pub(crate) fn is_moved(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Moved>())
}

/// What [`moved_error`] carries, so that [`is_moved`] can tell it.
#[derive(Debug)]
struct Moved;

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the operation was in flight on another runtime's loop, which does not run this \
             wait; it was cancelled there, having done nothing: start it again on this runtime",
        )
    }
}

impl std::error::Error for Moved {}

/// The error of an operation cancelled because another executor awaited
/// it while no runtime of the thread ran `block_on` (see [`submit`]). Not
/// `Interrupted`: a retry in place would only fail again.
pub(crate) fn unserved_error() -> io::Error {
    io::Error::other(
        "no ringloop runtime runs this wait: the operation was in flight on a runtime's loop, \
         awaited by another executor while no runtime of this thread runs block_on, so nothing \
         would reap it; it was cancelled there, having done nothing: await it inside \
         Runtime::block_on or one of its tasks",
    )
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
        if let State::InFlight {
            handle,
            id,
            resources,
            ..
        } = &mut self.state
            && let Some(res) = resources.take()
        {
            let (orphan, salvage) = (self.orphan, self.salvage);
            // Runs when the kernel is done (at once if it already is): closes
            // an fd the operation produced, then salvages or frees the
            // resources.
            handle.detach_task_op(
                *id,
                Box::new(move |c| {
                    orphan.clean_up(&c);
                    match salvage {
                        Some(salvage) => salvage(c, res),
                        None => drop(res),
                    }
                }),
            );
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
