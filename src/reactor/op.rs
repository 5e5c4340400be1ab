//! Generic submission: any io_uring operation, completed through a callback.
//!
//! This is how layers above the reactor (the executor, files, sockets, or a
//! user's own library) reach the ring without knowing the loop's internals.

use std::io;
use std::task::{Poll, RawWakerVTable, Waker};

use io_uring::{cqueue, opcode, squeue};
use slotmap::Key;

use super::{EventKind, Handle, IGNORE, Op, OpCallback, State, TracePoint};
use crate::error::{Error, Result};

slotmap::new_key_type! {
    /// Names an in-flight io_uring operation of one loop.
    pub struct OpId;
}

/// One completion of an operation: the kernel's `res` and CQE flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The raw result: non-negative on success, `-errno` on failure.
    pub result: i32,
    /// The CQE flags (`IORING_CQE_F_MORE` and others).
    pub flags: u32,
}

impl Completion {
    /// The result as an `io::Result`.
    pub fn result(&self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(self.result.saturating_neg()))
        } else {
            Ok(self.result as u32)
        }
    }

    /// Whether more completions of a multishot operation follow.
    pub fn has_more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// Releases the resources of an operation whose future was dropped, given
/// the operation's completion (to close an fd it produced, say).
pub(crate) type Release = Box<dyn FnOnce(Completion)>;

/// An operation awaited by a future ([`crate::op::Op`]). Its completion waits
/// in this entry of the loop's table until the future takes it, so a futures
/// operation costs no allocation and no callback: the completion stores the
/// result and wakes the task. The resources stay in the future, and move
/// here (as `release`) only if the future is dropped first.
#[derive(Default)]
pub(super) struct TaskOp {
    /// The first completion, until the future takes it.
    completion: Option<Completion>,
    waker: Option<Waker>,
    /// The dropped future's resources, freed at the final completion.
    release: Option<Release>,
    /// Cleans up a completion nobody reads, other than the final one of a
    /// dropped future (which `release` gets): the later results of an
    /// operation that posts several (an fd a multishot accept made, say).
    surplus: Option<fn(&Completion)>,
    /// The kernel posted the final completion.
    done: bool,
    /// The future was dropped.
    detached: bool,
    cancel_sent: bool,
}

/// What [`Handle::poll_task_op`] found.
pub(crate) enum TaskPoll {
    /// The operation is over: its (first) completion.
    Ready(Completion),
    /// Still in the kernel; `new_waker`: the waker given replaced another
    /// one (or none), so the task polling it may be a new one.
    Pending { new_waker: bool },
}

impl TaskPoll {
    /// The completion, if any, as a `Poll`.
    pub(crate) fn ready(self) -> Poll<Completion> {
        match self {
            TaskPoll::Ready(c) => Poll::Ready(c),
            TaskPoll::Pending { .. } => Poll::Pending,
        }
    }
}

impl TaskOp {
    /// The completion of a finished operation whose future is alive and has
    /// not taken it.
    pub(super) fn settled_unread(&self) -> Option<Completion> {
        match self.completion {
            Some(c) if self.done && !self.detached => Some(c),
            _ => None,
        }
    }

    /// At teardown: a dropped future's resources that the kernel may still
    /// use are leaked rather than freed under it.
    pub(super) fn leak_if_in_flight(mut self) {
        if let Some(release) = self.release.take() {
            std::mem::forget(release);
        }
    }
}

/// Work a completion calls for that may run user code, done once the loop's
/// state is no longer borrowed.
pub(super) enum Deferred {
    Wake(Waker),
    Release(Release, Completion),
}

impl Deferred {
    pub(super) fn run(self) {
        match self {
            Deferred::Wake(waker) => waker.wake(),
            Deferred::Release(release, c) => release(c),
        }
    }
}

/// Wakes `waker` at once if its vtable is `inline` (a waker that only queues
/// a task, see [`Handle::set_inline_waker`]), else defers the wake until the
/// loop's state is released: any other waker may run user code. Waking the
/// runtime's wakers here spares the executor's hot path the deferral
/// (together with the poll pass that leaves tasks in their slots,
/// pipe_bench `ringloop-async` at 100 pipes went from 1 341 to 1 148
/// instructions per event, scripts/instructions.sh).
pub(super) fn wake_or_defer(
    deferred: &mut Vec<Deferred>,
    inline: Option<&'static RawWakerVTable>,
    waker: Waker,
) {
    if inline.is_some_and(|vtable| std::ptr::eq(waker.vtable(), vtable)) {
        waker.wake();
    } else {
        deferred.push(Deferred::Wake(waker));
    }
}

impl Handle {
    /// Declares that wakers with `vtable` only queue a task: waking or
    /// dropping one runs no user code and never calls into this loop, so
    /// the loop may wake them while its state is borrowed, as it reaps,
    /// instead of deferring them. The runtime declares its own wakers
    /// (`rt::waker::TASK_WAKER`).
    pub(crate) fn set_inline_waker(&self, vtable: &'static RawWakerVTable) -> Result<()> {
        self.with(|st| st.inline_waker = Some(vtable))
    }
}

/// `IOSQE_CQE_SKIP_SUCCESS`, at byte 1 of an SQE.
const SKIP_SUCCESS_BIT: u8 = 1 << 6;
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

fn sqe_flags(entry: &squeue::Entry) -> u8 {
    // SAFETY: `squeue::Entry` is a `repr(C)` wrapper of the 64-byte
    // `io_uring_sqe` (asserted above), whose byte 1 is `flags`.
    let bytes: &[u8; 64] = unsafe { &*(entry as *const squeue::Entry).cast() };
    bytes[1]
}

impl Handle {
    /// Submits an io_uring operation built with `io_uring::opcode`; the
    /// callback runs exactly once, in the fd phase of a later iteration, with
    /// the result, also when the operation was cancelled or the loop dropped.
    ///
    /// The entry's `user_data` is replaced by the loop's own.
    ///
    /// The result is the operation's first completion. If the kernel says
    /// more follow (`IORING_CQE_F_MORE`), the callback waits for the last
    /// one, so that what it owns stays alive while the kernel still uses it
    /// (a zero-copy send reads its buffer until its notification), and a
    /// multishot operation is cancelled and its later results are not
    /// delivered: use [`Handle::submit_multishot`] to see them (the loop
    /// does not know what a result means, so an fd one carries, from a
    /// multishot accept, stays open unseen; `op::submit_fd` closes them).
    ///
    /// # Safety
    /// Every buffer or struct the entry points to must stay valid (and not be
    /// moved) until the callback runs: the usual way is to move its owner
    /// into the callback.
    ///
    /// ```
    /// use ringloop::EventLoop;
    /// use io_uring::opcode;
    /// let lp = EventLoop::new()?;
    /// // SAFETY: NOP points at no memory.
    /// unsafe { lp.submit(opcode::Nop::new().build(), |_, c| assert_eq!(c.result, 0))? };
    /// lp.run()?;
    /// # Ok::<(), ringloop::Error>(())
    /// ```
    pub unsafe fn submit(
        &self,
        entry: squeue::Entry,
        on_complete: impl FnOnce(&Handle, Completion) + 'static,
    ) -> Result<OpId> {
        let mut once = Some(on_complete);
        let mut first = None;
        let callback: OpCallback = Box::new(move |h, c| {
            if c.has_more() {
                // More completions follow (a zero-copy send's notification,
                // or a multishot operation, which the loop cancels): the
                // result is this first one, given at the last, so that what
                // the callback owns outlives the kernel's use of it.
                first.get_or_insert(c);
                return;
            }
            if let Some(f) = once.take() {
                f(h, first.unwrap_or(c))
            }
        });
        // SAFETY: forwarded from the caller.
        unsafe { self.submit_boxed(entry, callback, true) }
    }

    /// Like [`Handle::submit`] for multishot operations: the callback runs
    /// once per completion until one arrives without `IORING_CQE_F_MORE`.
    ///
    /// # Safety
    /// As for [`Handle::submit`].
    pub unsafe fn submit_multishot(
        &self,
        entry: squeue::Entry,
        on_complete: impl FnMut(&Handle, Completion) + 'static,
    ) -> Result<OpId> {
        // SAFETY: forwarded from the caller.
        unsafe { self.submit_boxed(entry, Box::new(on_complete), false) }
    }

    unsafe fn submit_boxed(
        &self,
        entry: squeue::Entry,
        callback: OpCallback,
        once: bool,
    ) -> Result<OpId> {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.submit_op(
                entry,
                Op::User {
                    callback: Some(callback),
                    done: false,
                    cancel_sent: false,
                    once,
                },
            )
        }
    }

    /// Submits an operation a future awaits with [`Handle::poll_task_op`].
    ///
    /// # Safety
    /// As for [`Handle::submit`]: what the entry points to is owned by the
    /// future, which hands it to [`Handle::detach_task_op`] if dropped early.
    ///
    /// The future's result is the first completion, and it is ready once
    /// the kernel is done: if the kernel says more completions follow, the
    /// loop cancels the operation (ending a multishot one; a zero-copy send
    /// only waits for its notification), hands each later result to
    /// `surplus`, and the future resolves at the last completion.
    pub(crate) unsafe fn submit_task_op(
        &self,
        entry: squeue::Entry,
        surplus: Option<fn(&Completion)>,
    ) -> Result<OpId> {
        let op = TaskOp {
            surplus,
            ..TaskOp::default()
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.submit_op(entry, Op::Task(op)) }
    }

    pub(super) unsafe fn submit_op(&self, entry: squeue::Entry, op: Op) -> Result<OpId> {
        if sqe_flags(&entry) & SKIP_SUCCESS_BIT != 0 {
            // Its success would never be seen and the operation would stay
            // in flight forever.
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "IOSQE_CQE_SKIP_SUCCESS is not allowed on operations submitted through the loop",
            )));
        }
        let id = self.with(|st| {
            let id = st.ops.insert(op);
            let entry = entry.user_data(id.data().as_ffi());
            // SAFETY: forwarded from the caller.
            match unsafe { st.ring.push(&entry) } {
                Ok(()) => {
                    st.user_ops += 1;
                    Ok(id)
                }
                Err(e) => {
                    st.ops.remove(id);
                    Err(Error::Io(e))
                }
            }
        })?;
        let id = id?;
        self.trace(TracePoint::Attach(EventKind::Op));
        Ok(id)
    }

    /// Takes the completion of a future's operation, or registers `waker` to
    /// be woken when it arrives. Once the loop is gone, an operation it saw
    /// finish still resolves; one it could not settle never does (the
    /// kernel may still use its buffers).
    ///
    /// Pending, it says whether `waker` is new (not the one stored before):
    /// a future checks once per waker, not per poll, that its loop is the
    /// one that runs it (see [`Handle::settle_task_op_now`]).
    pub(crate) fn poll_task_op(&self, id: OpId, waker: &Waker) -> TaskPoll {
        match self.with(|st| st.poll_task_op(id, waker)) {
            Ok(poll) => poll,
            Err(_) => match self.take_settled_at_teardown(id) {
                Some(c) => TaskPoll::Ready(c),
                None => TaskPoll::Pending { new_waker: false },
            },
        }
    }

    /// A future's operation is awaited where this loop does not run (by a
    /// task of another runtime of the thread, this loop idle): nothing
    /// would ever reap its completion. Cancels it and gives the kernel a
    /// turn now (the cancel and anything else queued go in, its completion
    /// work runs, and what it brings is reaped and routed, without running
    /// any handler), so that it is settled at once: the completion, which
    /// is `-ECANCELED` or the result it had reached first. Pending only if
    /// the kernel could not give it back yet (an operation that cannot be
    /// interrupted, a regular file's read on a worker thread, say).
    pub(crate) fn settle_task_op_now(&self, id: OpId, waker: &Waker) -> Poll<Completion> {
        let _ = self.with(|st| st.cancel_user_op(id));
        let _ = self.turn_kernel_now();
        self.poll_task_op(id, waker).ready()
    }

    /// The completion teardown saw for an operation whose future was alive.
    fn take_settled_at_teardown(&self, id: OpId) -> Option<Completion> {
        self.inner
            .settled_at_teardown
            .borrow_mut()
            .remove(&id.data().as_ffi())
    }

    /// The future of an operation is dropped: `release` frees its resources
    /// once the kernel is done with them (now, if it already is), and the
    /// operation is cancelled.
    pub(crate) fn detach_task_op(&self, id: OpId, release: Release) {
        // Kept out here so that a `with` that cannot run its closure does not
        // drop (free) the resources.
        let mut release = Some(release);
        let now = match self.with(|st| st.detach_task_op(id, release.take())) {
            Ok(now) => now,
            Err(Error::LoopGone) => {
                let settled = self.take_settled_at_teardown(id);
                // After teardown: the completion is kept if the loop saw the
                // operation end; if not, the kernel may still use the memory.
                match settled {
                    Some(c) => Some((release, None, c)),
                    None => {
                        std::mem::forget(release);
                        None
                    }
                }
            }
            Err(_) => {
                // Forked child or a state borrowed from outside: the kernel
                // may still use the memory, so it is leaked.
                std::mem::forget(release);
                None
            }
        };
        if let Some((release, waker, c)) = now {
            drop(waker);
            if let Some(release) = release {
                release(c);
            }
        }
    }

    /// Asks the kernel to cancel an operation. Its callback still runs once,
    /// with `-ECANCELED` or with the result it completed with first.
    pub fn cancel_op(&self, id: OpId) -> Result<()> {
        self.with(|st| {
            if !matches!(st.ops.get(id), Some(Op::User { .. })) {
                return Err(Error::NotFound);
            }
            st.cancel_user_op(id);
            if !st.ring.features.defer_taskrun {
                // On a ring without DEFER_TASKRUN a cancelled request leaves
                // its poll entry on the file's wait queue until task work
                // runs. An operation submitted in the same io_uring_enter
                // (an accept on the same listener, say) can then lose an
                // exclusive wake-up to the dead entry and never complete.
                // Hand the cancel to the kernel on its own.
                st.ring.flush().map_err(Error::Io)?;
            }
            Ok(())
        })?
    }
}

impl State {
    /// Sends one cancel for a user or future's operation that has not completed.
    pub(super) fn cancel_user_op(&mut self, id: OpId) {
        let cancel_sent = match self.ops.get_mut(id) {
            Some(Op::User {
                done: false,
                cancel_sent,
                ..
            }) => cancel_sent,
            Some(Op::Task(task)) if !task.done => &mut task.cancel_sent,
            Some(Op::MultiTask(op)) if !op.done => &mut op.cancel_sent,
            Some(Op::Readiness(op)) => &mut op.cancel_sent,
            _ => return,
        };
        if *cancel_sent {
            return;
        }
        *cancel_sent = true;
        let entry = opcode::AsyncCancel::new(id.data().as_ffi())
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(IGNORE);
        self.push_internal(entry);
    }

    /// Sends another cancel for an operation that has not completed, even if
    /// one was sent before (it may have missed).
    pub(super) fn cancel_user_op_again(&mut self, id: OpId) {
        match self.ops.get_mut(id) {
            Some(Op::User { cancel_sent, .. }) => *cancel_sent = false,
            Some(Op::Task(task)) => task.cancel_sent = false,
            Some(Op::MultiTask(op)) => op.cancel_sent = false,
            Some(Op::Readiness(op)) => op.cancel_sent = false,
            _ => return,
        }
        self.cancel_user_op(id);
    }

    /// Routes a completion of a future's operation: stores the first one,
    /// and at the final one wakes the future, or frees the entry if the
    /// future is gone. A first completion that says more follow cancels
    /// the operation, and the ones after it go to the entry's `surplus`
    /// clean-up (see [`Handle::submit_task_op`]).
    pub(super) fn route_task_op(&mut self, id: OpId, c: Completion, more: bool) {
        let Some(Op::Task(task)) = self.ops.get_mut(id) else {
            return;
        };
        if task.done {
            return;
        }
        let first = !task.detached && task.completion.is_none();
        if first {
            task.completion = Some(c);
        } else if (more || !task.detached)
            && let Some(surplus) = task.surplus
        {
            // Nobody's result (a dropped future's final one goes to its
            // release instead).
            surplus(&c);
        }
        if more {
            if first {
                self.cancel_user_op(id);
            }
            return;
        }
        task.done = true;
        self.user_ops -= 1;
        if task.detached {
            let release = task.release.take();
            self.forget_detached_op(id, release, c);
            return;
        }
        if let Some(waker) = task.waker.take() {
            wake_or_defer(&mut self.deferred, self.inline_waker, waker);
        }
    }

    /// The final completion `c` of an operation whose future (or owner) is
    /// gone: frees its entry, and its resources once the state is released.
    pub(super) fn forget_detached_op(&mut self, id: OpId, release: Option<Release>, c: Completion) {
        self.ops.remove(id);
        if let Some(release) = release {
            self.deferred.push(Deferred::Release(release, c));
        }
    }

    fn poll_task_op(&mut self, id: OpId, waker: &Waker) -> TaskPoll {
        let Some(Op::Task(task)) = self.ops.get_mut(id) else {
            // Only the future removes an unfinished entry, so this does not
            // happen; never resolving is the safe answer if it did.
            return TaskPoll::Pending { new_waker: false };
        };
        if task.done
            && let Some(c) = task.completion.take()
        {
            self.ops.remove(id);
            return TaskPoll::Ready(c);
        }
        match &task.waker {
            Some(w) if w.will_wake(waker) => TaskPoll::Pending { new_waker: false },
            _ => {
                task.waker = Some(waker.clone());
                TaskPoll::Pending { new_waker: true }
            }
        }
    }

    /// See [`Handle::detach_task_op`]. Returns what to run outside the state
    /// borrow: the release (if the kernel is done), the old waker (its drop
    /// may run foreign code) and the completion.
    fn detach_task_op(
        &mut self,
        id: OpId,
        release: Option<Release>,
    ) -> Option<(Option<Release>, Option<Waker>, Completion)> {
        let cancelled = Completion {
            result: -libc::ECANCELED,
            flags: 0,
        };
        let Some(Op::Task(task)) = self.ops.get_mut(id) else {
            // Not in the table: nothing of the kernel's refers to it.
            return Some((release, None, cancelled));
        };
        task.detached = true;
        let waker = task.waker.take();
        if task.done {
            let c = task.completion.take().unwrap_or(cancelled);
            self.ops.remove(id);
            return Some((release, waker, c));
        }
        if let Some(c) = task.completion.take()
            && let Some(surplus) = task.surplus
        {
            // The first of several completions, which nobody will read.
            surplus(&c);
        }
        task.release = release;
        self.cancel_user_op(id);
        if !self.ring.features.defer_taskrun {
            // As in `Handle::cancel_op`: without DEFER_TASKRUN the cancel
            // goes to the kernel on its own, or a dead poll entry can steal
            // the exclusive wake-up of an operation submitted with it.
            let _ = self.ring.flush();
        }
        Some((None, waker, cancelled))
    }
}
