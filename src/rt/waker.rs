//! Wakers: `Send + Sync`, no allocation of their own, never queue a task
//! twice.
//!
//! Each task has a [`Header`] shared by all its wakers. Waking sets the
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
//!
//! Every waker the runtime makes uses one vtable, [`TASK_WAKER`], so the
//! loop can tell them from wakers of other executors or combinators: waking
//! one runs no user code (it only queues a task, and dropping it frees at
//! most a `Header`), so the loop wakes them as it reaps instead of deferring
//! them until its state is released (see `Handle::set_inline_waker`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{RawWaker, RawWakerVTable, Waker};

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
    /// The runtime's loop, as `Handle::loop_id` (see [`task_of_loop`]).
    loop_id: usize,
}

impl Shared {
    pub(crate) fn new(remote: Remote, loop_id: usize) -> Self {
        Shared {
            queue: Mutex::new(Some(VecDeque::new())),
            maybe_queued: AtomicBool::new(false),
            owner: thread_tag(),
            remote,
            loop_id,
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

    /// Puts the tasks of `keys` (taken from the queue and not polled yet,
    /// so still marked queued) back at its front, in their order.
    pub(crate) fn requeue_front(&self, keys: &mut VecDeque<TaskKey>) {
        if keys.is_empty() {
            return;
        }
        if let Some(q) = self.lock().as_mut() {
            for key in keys.drain(..).rev() {
                q.push_front(key);
            }
            self.maybe_queued.store(true, Ordering::Release);
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

/// Per-task wake state, shared by all of the task's wakers: the only part of
/// a task that other threads can reach, in an `Arc` of its own (the task
/// itself stays on the runtime's thread). The future given to `block_on`
/// has one too.
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

impl Header {
    /// A waker for this header's task, using [`TASK_WAKER`].
    pub(crate) fn into_waker(self: Arc<Self>) -> Waker {
        let data = Arc::into_raw(self).cast::<()>();
        // SAFETY: `data` comes from `Arc::into_raw` of an `Arc<Header>`, and
        // the new waker owns that reference: it is what `TASK_WAKER`'s
        // functions expect (see `raw_clone`).
        unsafe { Waker::from_raw(RawWaker::new(data, &TASK_WAKER)) }
    }
}

/// Whether `waker` is one of a runtime's own task wakers and that runtime's
/// loop is `loop_id`; `None` for any other waker (another executor's, a
/// combinator's). Such a waker is only ever handed to a poll inside its
/// runtime's `block_on`, so this tells which runtime polls without looking
/// for the thread's current one: a compare and two loads.
pub(crate) fn task_of_loop(waker: &Waker, loop_id: usize) -> Option<bool> {
    if !std::ptr::eq(waker.vtable(), &TASK_WAKER) {
        return None;
    }
    // SAFETY: a `TASK_WAKER` waker's data is a live `Arc<Header>` pointer
    // (see `raw_clone`), alive while the waker is.
    let header = unsafe { &*waker.data().cast::<Header>() };
    Some(header.shared.loop_id == loop_id)
}

/// The vtable of every waker the runtime makes: the data pointer is an
/// `Arc<Header>` turned into a raw pointer, one strong reference per waker.
/// A `static`, not a `const`, so that it has one address to compare with.
pub(crate) static TASK_WAKER: RawWakerVTable =
    RawWakerVTable::new(raw_clone, raw_wake, raw_wake_by_ref, raw_drop);

// The contract of the four functions below: `data` is a pointer from
// `Arc::<Header>::into_raw` that owns one strong reference, made by
// `Header::into_waker` or by `raw_clone`, and `Waker` calls `raw_wake` or
// `raw_drop` exactly once per such reference. `Header` is `Send + Sync`
// (asserted below), so any thread may make these calls.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Header>();
};

unsafe fn raw_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` is a live `Arc<Header>` pointer (see above); the new
    // reference is owned by the returned waker.
    unsafe { Arc::increment_strong_count(data.cast::<Header>()) };
    RawWaker::new(data, &TASK_WAKER)
}

unsafe fn raw_wake(data: *const ()) {
    // SAFETY: takes back the reference this waker owned (see `raw_clone`).
    let header = unsafe { Arc::from_raw(data.cast::<Header>()) };
    header.wake();
}

unsafe fn raw_wake_by_ref(data: *const ()) {
    // SAFETY: the waker still owns its reference, so the header is alive
    // for the length of this call.
    let header = unsafe { &*data.cast::<Header>() };
    header.wake();
}

unsafe fn raw_drop(data: *const ()) {
    // SAFETY: gives back the reference this waker owned (see `raw_clone`).
    drop(unsafe { Arc::from_raw(data.cast::<Header>()) });
}
