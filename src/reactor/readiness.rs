//! Readiness polls awaited by futures: [`crate::io::AsyncFd`] is the user.
//!
//! A multishot `POLL_ADD` whose completions are handed to their owner as
//! they are reaped, not by a callback dispatched per completion: the owner
//! records the readiness and returns the wakers to wake, so one iteration
//! serves every fd that became ready (as [`super::multi_op`] does for
//! receives). A callback per completion cost a loop iteration and an
//! executor poll pass per readiness change: pipe_bench's `AsyncFd` variant
//! at 8000 pipes went from 1 082 to 704 instructions per event without it.
//!
//! The kernel ends a multishot poll on its own now and then (a CQ overflow,
//! say). The loop then arms it again in place, under the same id, so the
//! owner never sees a gap; only an error that will not go away (the fd is
//! not pollable) ends it for good.

use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Waker;

use io_uring::{opcode, types};
use slotmap::Key;

use super::op::wake_or_defer;
use super::{Handle, Op, OpId, State};
use crate::error::Result;

/// The owner of a readiness poll: told about each completion while the
/// loop's state is borrowed, so it must not call into the loop.
pub(crate) trait ReadinessSink {
    /// The poll reported `revents`. Hands each waker to wake to `wake`.
    fn on_ready(&self, revents: u32, wake: &mut dyn FnMut(Waker));
    /// The poll ended for good with `errno`. Hands each waker to wake to
    /// `wake`.
    fn on_failed(&self, errno: i32, wake: &mut dyn FnMut(Waker));
}

/// A readiness poll's entry in the loop's table.
pub(super) struct ReadinessOp {
    fd: RawFd,
    mask: u32,
    sink: Rc<dyn ReadinessSink>,
    /// The loop asked the kernel to cancel it (teardown): not re-armed.
    pub(super) cancel_sent: bool,
    /// Times in a row the kernel ended the poll with no completion that
    /// kept it armed (see [`MAX_BARE_ENDS`]).
    bare_ends: u8,
    /// The loop's count of CQ overflow flushes when the poll was last armed.
    overflows_at_arm: u64,
}

/// A poll the kernel ends this many times in a row, each time without one
/// completion that kept it armed, is on an fd that cannot be polled (a
/// character device without a poll method, such as `/dev/null`: the kernel
/// answers every arm at once and ends it). Re-arming it would spin the
/// loop (about a million completions a second), so it ends for good with
/// `EPERM`, the error epoll gives for such an fd. A CQ overflow also ends a
/// poll, but a poll re-armed on a pollable fd posts its next readiness as a
/// completion that keeps it armed, which resets the count. That completion
/// may overflow too (thousands of ready fds re-armed at once through a small
/// CQ), ending the poll again, round after round: an end with an overflow
/// since the poll was armed is not counted.
const MAX_BARE_ENDS: u8 = 16;

/// The multishot poll of `fd` for `mask` (its `user_data` is set by whoever
/// submits it).
fn poll_entry(fd: RawFd, mask: u32) -> io_uring::squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd), mask)
        .multi(true)
        .build()
}

impl Handle {
    /// Arms a multishot poll of `fd` for the events in `mask`; `sink` hears
    /// of each completion as it is reaped. Like any operation it keeps `run`
    /// going until [`Handle::stop_readiness`].
    ///
    /// The caller keeps `fd` open until it stops the poll (a poll points at
    /// no memory, so a closed fd costs nothing worse than `EBADF`).
    pub(crate) fn submit_readiness(
        &self,
        fd: RawFd,
        mask: u32,
        sink: Rc<dyn ReadinessSink>,
    ) -> Result<OpId> {
        let overflows_at_arm = self.with(|st| st.stats.overflow_flushes)?;
        // Boxed: unboxed, the variant changes the enum's layout, and moving
        // every other operation into the table takes a `memcpy` (+74
        // instructions per `ringloop-ops` event, scripts/instructions.sh).
        let op = Op::Readiness(Box::new(ReadinessOp {
            fd,
            mask,
            sink,
            cancel_sent: false,
            bare_ends: 0,
            overflows_at_arm,
        }));
        // SAFETY: POLL_ADD points at no memory.
        unsafe { self.submit_op(poll_entry(fd, mask), op) }
    }

    /// Stops a readiness poll: its sink hears nothing more. The cancel is
    /// handed to the kernel, and the poll's end awaited, at once, so that
    /// closing the fd right after this ends the kernel's hold on the file
    /// (SEMANTICS.md §3), however much other work the kernel had queued.
    pub(crate) fn stop_readiness(&self, id: OpId) -> Result<()> {
        self.with(|st| {
            if !matches!(st.ops.get(id), Some(Op::Readiness(_))) {
                return;
            }
            st.user_ops -= 1;
            // The entry becomes an orphan whose completions are dropped.
            st.cancel_poll(id);
            st.settle_cancels(&[id]);
        })
    }
}

impl State {
    /// Routes a readiness poll's completion: the sink records it, its
    /// wakers are woken once the state is released, and a poll the kernel
    /// ended without an error is armed again under the same id.
    pub(super) fn route_readiness(&mut self, id: OpId, result: i32, more: bool) {
        let Some(Op::Readiness(op)) = self.ops.get_mut(id) else {
            return;
        };
        if result >= 0 {
            let (deferred, inline) = (&mut self.deferred, self.inline_waker);
            op.sink
                .on_ready(result as u32, &mut |w| wake_or_defer(deferred, inline, w));
        }
        if more {
            op.bare_ends = 0;
            return;
        }
        // Ended without an error (CQ overflow), or cancelled by the kernel
        // rather than by the loop: arm it again, unless it keeps ending at
        // once when nothing overflowed. (`stats` already counts this reap's
        // overflow flushes: they come before routing.)
        if self.stats.overflow_flushes == op.overflows_at_arm {
            op.bare_ends = op.bare_ends.saturating_add(1);
        }
        op.overflows_at_arm = self.stats.overflow_flushes;
        let rearm = !op.cancel_sent && (result >= 0 || result == -libc::ECANCELED);
        let errno = if rearm && op.bare_ends >= MAX_BARE_ENDS {
            libc::EPERM
        } else if rearm {
            let entry = poll_entry(op.fd, op.mask).user_data(id.data().as_ffi());
            // SAFETY: POLL_ADD points at no memory.
            match unsafe { self.ring.push(&entry) } {
                Ok(()) => return,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            }
        } else if result < 0 {
            -result
        } else {
            libc::ECANCELED
        };
        let Some(Op::Readiness(op)) = self.ops.remove(id) else {
            return;
        };
        self.user_ops -= 1;
        let (deferred, inline) = (&mut self.deferred, self.inline_waker);
        op.sink
            .on_failed(errno, &mut |w| wake_or_defer(deferred, inline, w));
    }
}
