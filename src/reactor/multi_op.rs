//! Multishot operations awaited by futures: a stream's multishot receive
//! (`net::multishot`) is the user.
//!
//! Like a future's single-shot operation ([`super::op::TaskOp`]), the
//! completions are handled when they are reaped, not by a handler each: they
//! queue in the operation's entry of the loop's table and the waiting tasks
//! are woken, so one iteration serves every stream that received data. A
//! callback per completion would cost a loop iteration (and a poll pass) per
//! completion instead.
//!
//! The operation's completions may name buffers of the loop's pool
//! ([`super::bufpool`]): the loop takes each such buffer out of the pool as
//! it reaps the completion, and hands back those nobody will read (the
//! owner was dropped). It also applies the owner's limit on unread
//! completions: it cancels the operation when the queue reaches it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};

use io_uring::{cqueue, squeue};
use slotmap::{Key, KeyData};

use super::op::{Release, wake_or_defer};
use super::{Completion, Handle, IGNORE, Op, OpId, State};
use crate::error::{Error, Result};

/// A multishot operation awaited by a future; its completions wait here.
pub(super) struct MultiTaskOp {
    /// Completions not yet taken, in order.
    queue: VecDeque<Completion>,
    /// Tasks waiting for a completion (several tasks may read one stream).
    wakers: Vec<Waker>,
    /// Unread completions at which the operation is cancelled.
    limit: usize,
    /// Completions the owner took and holds unread, as it counts them:
    /// they count against `limit` with the queue.
    held: Rc<Cell<usize>>,
    /// Completions reaped but not routed yet, in a reap that drains the
    /// kernel in several passes (see `State::note_unrouted`).
    unrouted: usize,
    /// The owner's resources, once it is dropped, freed at the final
    /// completion.
    release: Option<Release>,
    /// The kernel posted the final completion.
    pub(super) done: bool,
    /// The owner was dropped: completions go back to the pool.
    detached: bool,
    pub(super) cancel_sent: bool,
}

impl MultiTaskOp {
    /// At teardown: the completions a live owner has not taken yet.
    pub(super) fn take_unread(&mut self) -> Option<VecDeque<Completion>> {
        (!self.detached && !self.queue.is_empty()).then(|| std::mem::take(&mut self.queue))
    }

    /// At teardown: a dropped owner's resources that the kernel may still
    /// use are leaked rather than freed under it. Returns whether the
    /// operation is still in flight (its buffers then need leaking too).
    pub(super) fn leak_if_in_flight(mut self) -> bool {
        if let Some(release) = self.release.take() {
            std::mem::forget(release);
        }
        !self.done
    }
}

impl Handle {
    /// Submits a multishot operation that a future awaits with
    /// [`Handle::poll_multi_task_op`]: its completions queue in the loop,
    /// and once `limit` of them wait unread (queued, or taken and not yet
    /// read: the owner keeps `held` up to date) the loop cancels it.
    ///
    /// # Safety
    /// As for [`Handle::submit`]: what the entry points to is owned by the
    /// future, which hands it to [`Handle::detach_multi_task_op`] if dropped
    /// before the final completion.
    pub(crate) unsafe fn submit_multi_task_op(
        &self,
        entry: squeue::Entry,
        limit: usize,
        held: Rc<Cell<usize>>,
    ) -> Result<OpId> {
        let op = Op::MultiTask(Box::new(MultiTaskOp {
            queue: VecDeque::new(),
            wakers: Vec::new(),
            limit: limit.max(1),
            held,
            unrouted: 0,
            release: None,
            done: false,
            detached: false,
            cancel_sent: false,
        }));
        // SAFETY: forwarded from the caller.
        let id = unsafe { self.submit_op(entry, op) }?;
        let _ = self.with(|st| st.multi_task_ops += 1);
        Ok(id)
    }

    /// Moves every queued completion of the operation to the end of `out`
    /// and returns `Ready`, or registers `waker` if none is queued. `Ready`
    /// with nothing moved means the operation is unknown (it ended and its
    /// final completion was taken). Once the loop is gone, the first poll
    /// moves what teardown found queued, its final completion included.
    pub(crate) fn poll_multi_task_op(
        &self,
        id: OpId,
        waker: &Waker,
        out: &mut VecDeque<Completion>,
    ) -> Poll<()> {
        match self.with(|st| st.poll_multi_task_op(id, waker, out)) {
            Ok(poll) => poll,
            Err(_) => {
                let unread = self
                    .inner
                    .unread_at_teardown
                    .borrow_mut()
                    .remove(&id.data().as_ffi());
                out.extend(unread.into_iter().flatten());
                Poll::Ready(())
            }
        }
    }

    /// The owner of a multishot operation is dropped: the operation is
    /// cancelled, the buffers its completions name go back to the pool, and
    /// `release` runs at the final completion (now, if that is in already).
    pub(crate) fn detach_multi_task_op(&self, id: OpId, release: Release) {
        let mut release = Some(release);
        let outcome = self.with(|st| st.detach_multi_task_op(id, &mut release));
        match outcome {
            Ok(Some(wakers)) => drop(wakers),
            Ok(None) => {}
            Err(Error::LoopGone) => {
                // What the owner never took goes with it.
                self.inner
                    .unread_at_teardown
                    .borrow_mut()
                    .remove(&id.data().as_ffi());
                // Teardown waited for the final completion, or gave up and
                // leaked the pool the receive may still fill. Releasing
                // (closing the fd) is safe either way: the kernel holds its
                // own reference to the file.
            }
            Err(_) => {
                // Forked child or a state borrowed from outside: the kernel
                // may still use what the operation holds, so it is leaked.
                std::mem::forget(release.take());
            }
        }
        // The final completion is in (or the loop is gone): free it now.
        if let Some(release) = release {
            release(Completion {
                result: -libc::ECANCELED,
                flags: 0,
            });
        }
    }
}

impl State {
    /// Counts a reaped completion that will be routed once the reap is
    /// over, and cancels its multishot operation if it takes the operation
    /// to its limit: the cancel then goes in with the reap's next enter.
    pub(super) fn note_unrouted(&mut self, user_data: u64, flags: u32) {
        if !cqueue::more(flags) || user_data == IGNORE {
            return;
        }
        let key = KeyData::from_ffi(user_data);
        if key.as_ffi() != user_data {
            return;
        }
        let id = OpId::from(key);
        let Some(Op::MultiTask(op)) = self.ops.get_mut(id) else {
            return;
        };
        if op.done || op.detached || op.cancel_sent {
            return;
        }
        op.unrouted += 1;
        if op.queue.len() + op.held.get() + op.unrouted >= op.limit {
            self.cancel_user_op(id);
        }
    }

    /// Routes a completion of a future's multishot operation: queues it and
    /// wakes the readers, or hands its buffer back if the owner is gone.
    pub(super) fn route_multi_task_op(&mut self, id: OpId, c: Completion, more: bool) {
        let Some(Op::MultiTask(op)) = self.ops.get_mut(id) else {
            return;
        };
        if op.done {
            return;
        }
        op.unrouted = 0;
        // The buffer leaves the pool now, whoever reads it.
        let bid = match &self.buf_pool {
            Some(Some(pool)) => pool.take(c.flags),
            _ => None,
        };
        let mut over_limit = false;
        if op.detached {
            if let (Some(bid), Some(Some(pool))) = (bid, &self.buf_pool) {
                pool.recycle(bid);
            }
        } else {
            op.queue.push_back(c);
            for waker in op.wakers.drain(..) {
                wake_or_defer(&mut self.deferred, self.inline_waker, waker);
            }
            over_limit = more && op.queue.len() + op.held.get() >= op.limit;
        }
        if more {
            if over_limit && !op.cancel_sent {
                self.cancel_user_op(id);
                if !self.ring.features.defer_taskrun {
                    // A plain ring posts completions without waiting for
                    // an enter: send the cancel now, not at the next wait.
                    let _ = self.ring.flush();
                }
            }
            return;
        }
        op.done = true;
        self.multi_task_ops = self.multi_task_ops.saturating_sub(1);
        self.user_ops -= 1;
        if op.detached {
            let release = op.release.take();
            self.forget_detached_op(id, release, c);
        }
    }

    fn poll_multi_task_op(
        &mut self,
        id: OpId,
        waker: &Waker,
        out: &mut VecDeque<Completion>,
    ) -> Poll<()> {
        let Some(Op::MultiTask(op)) = self.ops.get_mut(id) else {
            return Poll::Ready(());
        };
        if !op.queue.is_empty() {
            if out.is_empty() {
                // The usual case: trade queues (each keeps an allocation)
                // rather than move the completions one by one.
                std::mem::swap(out, &mut op.queue);
            } else {
                out.extend(op.queue.drain(..));
            }
            if op.done {
                self.ops.remove(id);
            }
            return Poll::Ready(());
        }
        if !op.wakers.iter().any(|w| w.will_wake(waker)) {
            op.wakers.push(waker.clone());
        }
        Poll::Pending
    }

    /// See [`Handle::detach_multi_task_op`]: takes `release` if the
    /// operation is still in flight, and returns the wakers to drop outside
    /// the state borrow.
    fn detach_multi_task_op(
        &mut self,
        id: OpId,
        release: &mut Option<Release>,
    ) -> Option<Vec<Waker>> {
        let Some(Op::MultiTask(op)) = self.ops.get_mut(id) else {
            return None;
        };
        op.detached = true;
        let wakers = std::mem::take(&mut op.wakers);
        let unread = std::mem::take(&mut op.queue);
        if let Some(Some(pool)) = &self.buf_pool {
            for c in unread {
                if let Some(bid) = pool.buffer_id(c.flags) {
                    pool.recycle(bid);
                }
            }
        }
        if op.done {
            self.ops.remove(id);
            return Some(wakers);
        }
        op.release = release.take();
        self.cancel_user_op(id);
        if !self.ring.features.defer_taskrun {
            // As in `Handle::cancel_op`: without DEFER_TASKRUN the cancel
            // goes to the kernel on its own, or a dead poll entry can steal
            // the exclusive wake-up of an operation submitted with it.
            let _ = self.ring.flush();
        }
        Some(wakers)
    }
}
