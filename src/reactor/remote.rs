//! Cross-thread immediates: a `Send` handle that queues closures for the
//! loop's thread and wakes a loop blocked in `io_uring_enter`.
//!
//! The wake-up is an eventfd watched by a multishot POLL_ADD. An atomic
//! `notified` flag makes each burst of schedules cost one eventfd write.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use io_uring::{opcode, types};
use slotmap::Key;

use super::{Handle, OnceHandler, Op, State};
use crate::error::{Error, Result};
use crate::sys;

/// A closure scheduled from another thread.
type RemoteFn = Box<dyn FnOnce(&Handle) + Send>;

pub(crate) struct RemoteShared {
    queue: Mutex<Option<Vec<RemoteFn>>>,
    notified: AtomicBool,
    eventfd: OwnedFd,
}

impl RemoteShared {
    pub fn new() -> Result<Self> {
        Ok(RemoteShared {
            queue: Mutex::new(Some(Vec::new())),
            notified: AtomicBool::new(false),
            eventfd: sys::eventfd()?,
        })
    }

    /// Refuses further schedules and drops what is queued.
    pub fn shut_down(&self) {
        let queued = self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(queued);
    }

    /// Whether something was scheduled (or a wake asked for) that the loop
    /// has not taken yet.
    pub fn has_pending(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    fn notify(&self) {
        // Loading first spares the locked swap while a burst is under way.
        // A stale `true` is impossible after a take: the loop clears the
        // flag before it takes the queue's lock, and the caller pushed
        // under that lock, so its load sees the clear.
        if !self.notified.load(Ordering::Acquire) && !self.notified.swap(true, Ordering::AcqRel) {
            sys::eventfd_signal(self.eventfd.as_raw_fd());
        }
    }
}

/// Schedules work on a loop from any thread. Clone it freely.
///
/// ```
/// use ringloop::EventLoop;
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// let lp = EventLoop::new()?;
/// let remote = lp.remote()?;
/// let ran = Arc::new(AtomicBool::new(false));
/// let flag = ran.clone();
/// std::thread::spawn(move || remote.schedule(move |_| flag.store(true, Ordering::SeqCst)))
///     .join()
///     .unwrap()?;
/// lp.run_once()?; // wakes from io_uring_enter and runs the closure
/// assert!(ran.load(Ordering::SeqCst));
/// # Ok::<(), ringloop::Error>(())
/// ```
#[derive(Clone)]
pub struct Remote {
    shared: Arc<RemoteShared>,
}

impl Remote {
    /// Queues `f` to run on the loop's thread as an immediate, after those
    /// already scheduled from any thread, and wakes the loop.
    pub fn schedule(&self, f: impl FnOnce(&Handle) + Send + 'static) -> Result<()> {
        {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.as_mut().ok_or(Error::LoopGone)?.push(Box::new(f));
        }
        self.shared.notify();
        Ok(())
    }

    /// Wakes the loop without scheduling anything.
    pub fn wake(&self) -> Result<()> {
        if self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err(Error::LoopGone);
        }
        self.shared.notify();
        Ok(())
    }
}

impl Handle {
    /// A `Send + Sync` handle for scheduling work from other threads.
    pub fn remote(&self) -> Result<Remote> {
        self.with(|st| Remote {
            shared: st.remote.clone(),
        })
    }
}

impl State {
    /// Arms the multishot poll on the wake-up eventfd.
    pub(super) fn arm_wake(&mut self) -> Result<()> {
        if self.wake_armed.is_some() {
            return Ok(());
        }
        let op = self.ops.insert(Op::Wake);
        self.wake_armed = Some(op);
        let entry = opcode::PollAdd::new(
            types::Fd(self.remote.eventfd.as_raw_fd()),
            libc::POLLIN as u32,
        )
        .multi(true)
        .build()
        .user_data(op.data().as_ffi());
        self.push_internal(entry);
        Ok(())
    }

    /// Moves closures scheduled from other threads into the immediate queue.
    ///
    /// The eventfd's counter is not read back: the multishot poll posts a
    /// completion for every write whatever the counter holds, so a read
    /// would be a syscall per wake-up for nothing (the counter grows by one
    /// per burst of schedules and cannot get near its 2^64 limit).
    pub(super) fn take_remote(&mut self) {
        // Clear before taking: a schedule that lands after the take sees
        // `false` and writes the eventfd again, so no wake-up is lost.
        self.remote.notified.store(false, Ordering::Release);
        let taken = {
            let mut queue = self.remote.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.as_mut().map(std::mem::take).unwrap_or_default()
        };
        // They can never be rescheduled or cancelled, so the whole burst
        // takes one place in the FIFO. Collecting in place keeps the
        // allocation: only the closures' type loses `Send`.
        let batch: Vec<OnceHandler> = taken.into_iter().map(|f| f as OnceHandler).collect();
        self.immediates.push_batch(batch);
    }
}
