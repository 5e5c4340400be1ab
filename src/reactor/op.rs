//! Generic submission: any io_uring operation, completed through a callback.
//!
//! This is how layers above the reactor (the executor, files, sockets, or a
//! user's own library) reach the ring without knowing the loop's internals.

use std::io;

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
        let callback: OpCallback = Box::new(move |h, c| {
            if let Some(f) = once.take() {
                f(h, c)
            }
        });
        // SAFETY: forwarded from the caller.
        unsafe { self.submit_boxed(entry, callback) }
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
        unsafe { self.submit_boxed(entry, Box::new(on_complete)) }
    }

    unsafe fn submit_boxed(&self, entry: squeue::Entry, callback: OpCallback) -> Result<OpId> {
        if sqe_flags(&entry) & SKIP_SUCCESS_BIT != 0 {
            // Its success would never be seen and the operation would stay
            // in flight forever.
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "IOSQE_CQE_SKIP_SUCCESS is not allowed on operations submitted through the loop",
            )));
        }
        let id = self.with(|st| {
            let id = st.ops.insert(Op::User {
                callback: Some(callback),
                done: false,
                cancel_sent: false,
            });
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
    /// Sends one cancel for a user operation that has not completed.
    pub(super) fn cancel_user_op(&mut self, id: OpId) {
        if let Some(Op::User {
            done: false,
            cancel_sent,
            ..
        }) = self.ops.get_mut(id)
        {
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
    }
}
