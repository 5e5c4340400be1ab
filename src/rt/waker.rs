//! Wakers: `Send + Sync`, no allocation of their own, never queue a task
//! twice.
//!
//! Each task has a [`Header`] shared by all its wakers, inside the task's
//! own allocation. Waking sets the
//! header's `queued` flag; only the wake that flips it from `false` to `true`
//! pushes the task onto the runtime's run queue, so a task is queued at most
//! once however many times it is woken. The executor clears the flag just
//! before polling, so a wake during the poll queues the task again and no
//! wake-up is lost.
//!
//! A wake on the runtime's own thread only pushes onto the queue (an
//! uncontended mutex, no syscall): the executor drains the queue before the
//! loop waits. A wake from another thread also wakes the loop through the
//! reactor's [`Remote`] (an eventfd write, skipped when one is already
//! pending), so a loop blocked in `io_uring_enter` returns.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Wake;

use slotmap::Key;

use crate::reactor::Remote;

slotmap::new_key_type! {
    /// Names a spawned task of one runtime.
    pub(crate) struct TaskKey;
}

/// What a runtime's wakers share: its run queue and how to wake its loop.
pub(crate) struct Shared {
    /// Tasks to poll, in wake order; `None` once the runtime is gone, so late
    /// wakes are dropped.
    queue: Mutex<Option<VecDeque<TaskKey>>>,
    /// Whether `queue` may hold a task: set under the lock by every push,
    /// cleared under it by [`Shared::take_queue`], read without it. A stale
    /// `true` costs a non-blocking loop turn; a `false` cannot hide a push
    /// from this thread, and a push from another thread also wakes the loop.
    maybe_queued: AtomicBool,
    /// The thread that runs the runtime, as [`thread_tag`].
    owner: usize,
    remote: Remote,
}

impl Shared {
    pub(crate) fn new(remote: Remote) -> Self {
        Shared {
            queue: Mutex::new(Some(VecDeque::new())),
            maybe_queued: AtomicBool::new(false),
            owner: thread_tag(),
            remote,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<VecDeque<TaskKey>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the queued tasks into `out` (which should be empty).
    pub(crate) fn take_queue(&self, out: &mut VecDeque<TaskKey>) {
        if !self.has_queued() {
            return;
        }
        if let Some(q) = self.lock().as_mut() {
            std::mem::swap(q, out);
            self.maybe_queued.store(false, Ordering::Release);
        }
    }

    /// Whether any task may be queued (see `maybe_queued`).
    pub(crate) fn has_queued(&self) -> bool {
        self.maybe_queued.load(Ordering::Acquire)
    }

    /// Refuses further wakes and forgets queued ones.
    pub(crate) fn close(&self) {
        let old = self.lock().take();
        drop(old);
    }

    /// Wakes the loop if called from a thread other than the runtime's.
    fn notify(&self) {
        if thread_tag() != self.owner {
            // An error means the loop is gone: nothing left to wake.
            let _ = self.remote.wake();
        }
    }
}

thread_local! {
    static TAG: Cell<u8> = const { Cell::new(0) };
}

/// Names the calling thread: the address of a thread-local, unique among
/// live threads. Cheaper than `thread::current().id()` (no reference count
/// to touch), which matters because every wake asks. An address can be
/// reused once its thread has exited, but the owner thread outlives its
/// runtime (which is not `Send`), and after the runtime is gone a wake finds
/// the queue closed and does nothing.
fn thread_tag() -> usize {
    TAG.with(|t| t as *const Cell<u8> as usize)
}

/// Per-task wake state, shared by all of the task's wakers. A spawned
/// task's header lives in the task's own allocation (`task::TaskCell`); the
/// future given to `block_on` has one of its own, in an `Arc`.
pub(crate) struct Header {
    /// The task; the null key stands for the future given to `block_on`,
    /// which is not in the task table and is never put on the queue.
    pub(crate) key: TaskKey,
    /// Whether the task is queued (or, for `block_on`'s future, due a poll).
    pub(crate) queued: AtomicBool,
    pub(crate) shared: Arc<Shared>,
}

impl Header {
    pub(crate) fn new(key: TaskKey, shared: Arc<Shared>, queued: bool) -> Header {
        Header {
            key,
            queued: AtomicBool::new(queued),
            shared,
        }
    }

    /// Claims the pending wake before a poll: returns whether one was pending.
    pub(crate) fn take_wake(&self) -> bool {
        self.queued.swap(false, Ordering::AcqRel)
    }

    /// Wakes the task: queues it unless it is queued already, and wakes the
    /// loop if called from another thread. Touches only this header's
    /// atomics and the runtime's `Shared`, so it may run on any thread.
    pub(crate) fn wake(&self) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if !self.key.is_null() {
            let mut q = self.shared.lock();
            match q.as_mut() {
                Some(q) => {
                    q.push_back(self.key);
                    self.shared.maybe_queued.store(true, Ordering::Release);
                }
                None => return,
            }
        }
        self.shared.notify();
    }
}

/// The waker of `block_on`'s future.
impl Wake for Header {
    fn wake(self: Arc<Self>) {
        Header::wake(&self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        Header::wake(self);
    }
}
