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
        // The schedulers gather the next burst in the buffer of the last
        // one, which has run: a burst of many thousands would otherwise grow
        // a new buffer from nothing each time, with a copy at every doubling
        // and fresh pages to fault in.
        // (The immediate queue keeps one only up to a bound.)
        let spare: Vec<RemoteFn> = self.immediates.take_spent().map_or_else(Vec::new, |spent| {
            // Empty, so the closure never runs: collecting in place keeps
            // the buffer and only changes the element type back to the
            // `Send` closures the schedulers push.
            spent
                .into_iter()
                .map(|_| unreachable!("a spent batch is empty"))
                .collect()
        });
        let taken = {
            let mut queue = self.remote.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue
                .as_mut()
                .map(|queue| std::mem::replace(queue, spare))
                .unwrap_or_default()
        };
        // They can never be rescheduled or cancelled, so the whole burst
        // takes one place in the FIFO. Collecting in place keeps the
        // allocation: only the closures' type loses `Send`.
        let batch: Vec<OnceHandler> = taken.into_iter().map(|f| f as OnceHandler).collect();
        self.immediates.push_batch(batch);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::{EventLoop, WaitTimeout};

    /// The capacity of the buffer the schedulers push into.
    fn queue_capacity(lp: &EventLoop) -> usize {
        lp.with(|st| st.remote.queue.lock().unwrap().as_ref().unwrap().capacity())
            .unwrap()
    }

    #[test]
    fn a_burst_is_gathered_in_the_buffer_of_the_last_one() {
        let lp = EventLoop::builder()
            .wait_timeout(WaitTimeout::Never)
            .build()
            .unwrap();
        let remote = lp.remote().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let burst = |n: usize| {
            for _ in 0..n {
                let ran = ran.clone();
                remote
                    .schedule(move |_| {
                        ran.fetch_add(1, Ordering::Relaxed);
                    })
                    .unwrap();
            }
        };
        burst(1000);
        // The first turn takes the burst; its buffer is spent once the
        // last closure has run.
        while ran.load(Ordering::Relaxed) < 1000 {
            let _ = lp.run_once();
        }
        let first = lp.with(|st| st.immediates.spent_capacity()).unwrap();
        assert!(first >= 1000, "the spent batch kept its buffer: {first}");
        burst(10);
        // The next take hands that buffer to the schedulers, and the
        // second burst's buffer is spent in turn.
        while ran.load(Ordering::Relaxed) < 1010 {
            let _ = lp.run_once();
        }
        let capacity = queue_capacity(&lp);
        assert_eq!(
            capacity, first,
            "the schedulers got the first burst's buffer"
        );
        assert_eq!(ran.load(Ordering::Relaxed), 1010);
    }
}
