//! Wakers: `Send + Sync`, no allocation of their own, never queue a task
//! twice.
//!
//! Each task has a [`Header`] shared by all its wakers, at the start of the
//! task's one allocation, whose reference count it holds. Waking sets the
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
//! most the task's memory, whose future and output are gone by then), so
//! the loop wakes them as it reaps instead of deferring them until its
//! state is released (see `Handle::set_inline_waker`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, RawWaker, RawWakerVTable, Waker};

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
    /// `None` only in the unit tests that run tasks without a loop.
    remote: Option<Remote>,
    /// The runtime's loop, as `Handle::loop_id` (see [`task_of_loop`]).
    loop_id: usize,
}

impl Shared {
    pub(crate) fn new(remote: Remote, loop_id: usize) -> Self {
        Shared {
            queue: Mutex::new(Some(VecDeque::new())),
            maybe_queued: AtomicBool::new(false),
            owner: thread_tag(),
            remote: Some(remote),
            loop_id,
        }
    }

    /// A runtime's shared state with no loop to wake, for unit tests of the
    /// tasks themselves (which Miri can run: no io_uring).
    #[cfg(test)]
    pub(crate) fn without_loop() -> Self {
        Shared {
            queue: Mutex::new(Some(VecDeque::new())),
            maybe_queued: AtomicBool::new(false),
            owner: thread_tag(),
            remote: None,
            loop_id: usize::MAX,
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
        if thread_tag() != self.owner
            && let Some(remote) = &self.remote
        {
            // An error means the loop is gone: nothing left to wake.
            let _ = remote.wake();
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

/// What a task's [`Header`] knows of the rest of its allocation: one
/// `static` per kind of allocation (a `task::TaskCell<F>` for each `F`, a
/// bare `Header` for `block_on`'s future), so a header is all anybody
/// needs to hold.
pub(crate) struct TaskVtable {
    /// Polls the task once with `waker` (see `task::TaskCell::poll_task`).
    /// Called on the runtime's thread only, by a holder of a [`TaskRef`].
    pub(crate) poll: unsafe fn(NonNull<Header>, &Waker) -> Poll<()>,
    /// Drops the task's future (see `task::TaskCell::cancel`). Called on the
    /// runtime's thread only, by a holder of a [`TaskRef`].
    pub(crate) cancel: unsafe fn(NonNull<Header>),
    /// Frees the allocation, once its last reference is given back, on
    /// whatever thread that is: it drops only what is `Send` (the header's
    /// `Shared`), and it leaks the allocation rather than drop a future or
    /// an output still in it (which the runtime's thread always drops
    /// before it gives back its last reference; see `task.rs`).
    pub(crate) dealloc: unsafe fn(NonNull<Header>),
}

/// Per-task wake state, shared by all of the task's wakers: the only part of
/// a task that other threads can reach. It starts the task's one
/// allocation (`task::TaskCell`, `#[repr(C)]`, the header first), whose
/// reference count it holds: the table, the `JoinHandle`, a poll in
/// progress and every waker each own one reference, and the last one given
/// back, on any thread, frees the allocation through the `vtable`. The
/// future given to `block_on` has a header too, allocated alone.
pub(crate) struct Header {
    /// The references to the allocation (see [`TaskRef`] and the wakers).
    refs: AtomicUsize,
    /// Whether the task is queued (or, for `block_on`'s future, due a poll).
    pub(crate) queued: AtomicBool,
    /// The task; the null key stands for the future given to `block_on`,
    /// which is not in the task table and is never put on the queue.
    pub(crate) key: TaskKey,
    pub(crate) shared: Arc<Shared>,
    vtable: &'static TaskVtable,
}

impl Header {
    /// A header with one reference, for an allocation that `vtable` knows
    /// how to poll, cancel and free (see [`TaskRef::from_raw`]).
    pub(crate) fn new(
        key: TaskKey,
        shared: Arc<Shared>,
        queued: bool,
        vtable: &'static TaskVtable,
    ) -> Header {
        Header {
            refs: AtomicUsize::new(1),
            queued: AtomicBool::new(queued),
            key,
            shared,
            vtable,
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

    /// Takes one more reference (for a new [`TaskRef`] or waker).
    fn acquire_ref(&self) {
        // Relaxed, as `Arc::clone`: a new reference is made from one the
        // caller holds, so the count cannot reach zero meanwhile.
        let old = self.refs.fetch_add(1, Ordering::Relaxed);
        // As `Arc`: a count this high means references are being leaked in
        // a loop; abort before it can wrap around and free a live task.
        if old > isize::MAX as usize {
            std::process::abort();
        }
    }
}

/// Gives back one reference to the allocation `header` starts; the last one
/// frees it, on whatever thread that is.
///
/// # Safety
/// The caller owns one reference to a live header (made by
/// [`TaskRef::from_raw`], [`Header::acquire_ref`] or [`TaskRef::main`]) and
/// gives it up: it must not touch the allocation afterwards.
unsafe fn release(header: NonNull<Header>) {
    // SAFETY: the caller's reference keeps the header alive until the
    // decrement below gives it back; `h` is not used after it, except by
    // the one who gave back the last reference, when nobody else can.
    let h = unsafe { header.as_ref() };
    // Release: whatever this holder did with the task (the runtime's thread
    // dropping the future or the output) happens before the free. Acquire,
    // for the one that gives back the last reference: the free sees every
    // other holder's writes (each decrement releases).
    // `Arc` uses a `Release` decrement and an `Acquire` fence instead, but
    // ThreadSanitizer does not understand fences (std swaps the fence for a
    // load under it); on x86 both are the same `lock xadd`.
    if h.refs.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let dealloc = h.vtable.dealloc;
    // SAFETY: that was the last reference, so nothing else can reach the
    // allocation; `dealloc` is the vtable it was made with.
    unsafe { dealloc(header) };
}

/// A counted reference to a task's allocation, held on the runtime's thread
/// (by the task table, the `JoinHandle`, a poll in progress, `block_on`).
/// Neither `Send` nor `Sync` (a `NonNull` is neither): only wakers, which
/// reach nothing past the [`Header`], go to other threads.
pub(crate) struct TaskRef {
    header: NonNull<Header>,
}

/// `vtable` of a bare [`Header`] (`block_on`'s future): nothing to poll or
/// cancel, and a `Box<Header>` to free.
static HEADER_ONLY: TaskVtable = TaskVtable {
    poll: |_, _| Poll::Ready(()),
    cancel: |_| {},
    dealloc: dealloc_header,
};

/// `HEADER_ONLY`'s `dealloc`.
///
/// # Safety
/// `header` was allocated by [`TaskRef::main`], and its last reference is
/// gone.
unsafe fn dealloc_header(header: NonNull<Header>) {
    // SAFETY: made by `Box::into_raw` in `TaskRef::main`, and unreachable by
    // anybody else now (see `release`). A `Header` is `Send`.
    drop(unsafe { Box::from_raw(header.as_ptr()) });
}

impl TaskRef {
    /// Takes over the one reference of the header `header` points to.
    ///
    /// # Safety
    /// `header` points to a live [`Header`] made by [`Header::new`] whose
    /// count includes a reference nobody else owns, at the start of an
    /// allocation that the header's vtable polls, cancels and frees (its
    /// type is `#[repr(C)]` with the header first, and the pointer's
    /// provenance covers all of it, as `Box::into_raw` gives).
    pub(crate) unsafe fn from_raw(header: NonNull<Header>) -> TaskRef {
        TaskRef { header }
    }

    /// A bare header, for the future given to `block_on`.
    pub(crate) fn main(key: TaskKey, shared: Arc<Shared>, queued: bool) -> TaskRef {
        let header = Box::new(Header::new(key, shared, queued, &HEADER_ONLY));
        let header = NonNull::from(Box::leak(header));
        // SAFETY: a fresh `Header` with one reference, alone in its
        // allocation, which `HEADER_ONLY` frees as a `Box<Header>`.
        unsafe { TaskRef::from_raw(header) }
    }

    /// The header, to reach the allocation behind it (see
    /// `join::JoinRef`).
    pub(crate) fn as_ptr(&self) -> NonNull<Header> {
        self.header
    }

    /// A waker for this task, using [`TASK_WAKER`]; it owns a reference of
    /// its own.
    pub(crate) fn waker(&self) -> Waker {
        self.acquire_ref();
        let data = self.header.as_ptr().cast_const().cast::<()>();
        // SAFETY: `data` points to a live header, and the new waker owns the
        // reference just taken: what `TASK_WAKER`'s functions expect (see
        // `raw_clone`).
        unsafe { Waker::from_raw(RawWaker::new(data, &TASK_WAKER)) }
    }

    /// Polls the task once, with a waker that borrows this reference.
    pub(crate) fn poll(&self) -> Poll<()> {
        let data = self.header.as_ptr().cast_const().cast::<()>();
        // SAFETY: a `TASK_WAKER` waker over this header that owns no
        // reference: `self` keeps the header alive while it is lent, and it
        // is never dropped (`ManuallyDrop`), so it never gives back a
        // reference it does not own. Its clones take their own.
        let waker = ManuallyDrop::new(unsafe { Waker::from_raw(RawWaker::new(data, &TASK_WAKER)) });
        // SAFETY: the header's own vtable, over the allocation `self`
        // keeps alive; only the runtime's thread holds a `TaskRef`.
        unsafe { (self.vtable.poll)(self.header, &waker) }
    }

    /// Drops the task's future (see `task::TaskCell::cancel`).
    pub(crate) fn cancel(&self) {
        // SAFETY: as in `poll`.
        unsafe { (self.vtable.cancel)(self.header) }
    }
}

impl std::ops::Deref for TaskRef {
    type Target = Header;

    fn deref(&self) -> &Header {
        // SAFETY: this reference keeps the header alive.
        unsafe { self.header.as_ref() }
    }
}

impl Clone for TaskRef {
    fn clone(&self) -> TaskRef {
        self.acquire_ref();
        TaskRef {
            header: self.header,
        }
    }
}

impl Drop for TaskRef {
    fn drop(&mut self) {
        // SAFETY: gives back the reference this `TaskRef` owned.
        unsafe { release(self.header) };
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
    // SAFETY: a `TASK_WAKER` waker's data is a live header (see
    // `raw_clone`), alive while the waker is.
    let header = unsafe { &*waker.data().cast::<Header>() };
    Some(header.shared.loop_id == loop_id)
}

/// The vtable of every waker the runtime makes: the data pointer is a
/// task's [`Header`], and the waker owns one of its references (but the one
/// a poll lends, which owns none and is never dropped: see
/// [`TaskRef::poll`]). A `static`, not a `const`, so that it has one
/// address to compare with.
pub(crate) static TASK_WAKER: RawWakerVTable =
    RawWakerVTable::new(raw_clone, raw_wake, raw_wake_by_ref, raw_drop);

// The contract of the four functions below: `data` points to a live
// `Header` and owns one of its references, made by `TaskRef::waker` or by
// `raw_clone`, and `Waker` calls `raw_wake` or `raw_drop` exactly once per
// such reference. `Header` is `Send + Sync` (asserted below), and these
// functions reach nothing else of the task but through `release`, whose
// free drops only what is `Send`: so any thread may make these calls.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Header>();
};

unsafe fn raw_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` is a live header (see above); the new reference is
    // owned by the returned waker.
    unsafe { &*data.cast::<Header>() }.acquire_ref();
    RawWaker::new(data, &TASK_WAKER)
}

unsafe fn raw_wake(data: *const ()) {
    // SAFETY: the waker's reference keeps the header alive for the wake.
    unsafe { &*data.cast::<Header>() }.wake();
    // SAFETY: gives back the reference this waker owned (see above).
    unsafe { release(NonNull::new_unchecked(data.cast_mut().cast::<Header>())) };
}

unsafe fn raw_wake_by_ref(data: *const ()) {
    // SAFETY: the waker still owns its reference, so the header is alive
    // for the length of this call.
    unsafe { &*data.cast::<Header>() }.wake();
}

unsafe fn raw_drop(data: *const ()) {
    // SAFETY: gives back the reference this waker owned (see above); a
    // waker's data is never null.
    unsafe { release(NonNull::new_unchecked(data.cast_mut().cast::<Header>())) };
}
