//! The task table and the poll pass: what runs tasks between loop iterations.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use slotmap::SlotMap;

use super::join::{JoinError, JoinHandle, JoinRef, JoinState, Joined};
use super::waker::{Header, Shared, TaskKey, TaskRef, TaskVtable};
use crate::reactor::Handle;

/// A spawned task: its header (the wakers' part, with the reference count),
/// the outcome its [`JoinHandle`] waits for, and its future, in one
/// allocation. The table, the handle, a poll in progress and every waker
/// each own a reference ([`TaskRef`], or a waker's); the wakers are the
/// only ones that may go to other threads, and they reach only the
/// [`Header`].
///
/// The future and the output are not `Send`, but the last reference may be
/// a waker given back on another thread, which then frees the allocation
/// ([`TaskCell::dealloc`]). So both are always dropped on the runtime's
/// thread first, each by the owner of a reference before it gives that
/// reference back:
/// * the future by the table's reference ([`OwnedTask`]'s drop: the task
///   finished, was aborted, or the runtime shut down), or, if it was
///   cancelled during its own poll, by the poll as it returns, before the
///   poll's reference goes;
/// * the output by the handle's drop, after which a later outcome is dropped
///   as it is produced (`JoinState::detached`); the awaiter's waker too.
///
/// The count is then zero only once both are gone, and the last release (an
/// acquire-release decrement) makes those drops visible to whichever thread
/// frees. A
/// runtime or handle leaked with `mem::forget` never gives its reference
/// back: the allocation is leaked, and nothing is dropped anywhere.
/// `#[repr(C)]`: the header starts the allocation, and the join state is
/// at the same place for every `F` (see [`Joined`]).
#[repr(C)]
struct TaskCell<F: Future> {
    head: Joined<F::Output>,
    /// Cancelled while being polled: the poll drops the future as it
    /// returns.
    cancel_pending: Cell<bool>,
    /// The future, until it finishes or is cancelled. Structurally pinned:
    /// it is only ever dropped in place (`*future = None`), never moved out.
    future: RefCell<Option<F>>,
}

impl<F: Future> TaskCell<F> {
    const VTABLE: TaskVtable = TaskVtable {
        poll: Self::poll_raw,
        cancel: Self::cancel_raw,
        dealloc: Self::dealloc,
    };

    /// Allocates a task for `future`: the table's reference and the
    /// handle's.
    fn allocate(key: TaskKey, shared: Arc<Shared>, future: F) -> (TaskRef, JoinRef<F::Output>) {
        let cell = Box::new(TaskCell {
            head: Joined {
                header: Header::new(key, shared, false, &Self::VTABLE),
                state: RefCell::new(JoinState::new()),
            },
            cancel_pending: Cell::new(false),
            future: RefCell::new(Some(future)),
        });
        let header = NonNull::from(Box::leak(cell)).cast::<Header>();
        // SAFETY: a fresh header with one reference, at the start of a
        // `TaskCell<F>` (`#[repr(C)]`, its first field's first field), which
        // `VTABLE` polls, cancels and frees as one; the pointer comes from
        // the whole `Box`.
        let task = unsafe { TaskRef::from_raw(header) };
        // SAFETY: a `TaskCell<F>` begins with a `Joined<F::Output>`.
        let join = unsafe { JoinRef::new(task.clone()) };
        (task, join)
    }

    /// `VTABLE.poll`.
    ///
    /// # Safety
    /// `header` starts a live `TaskCell<F>` (one made by `allocate`), kept
    /// alive by the caller's reference, on the runtime's thread.
    unsafe fn poll_raw(header: NonNull<Header>, waker: &Waker) -> Poll<()> {
        // SAFETY: see above; the cell is only ever reached through shared
        // references (its mutable parts are cells).
        let cell = unsafe { header.cast::<TaskCell<F>>().as_ref() };
        cell.poll_task(waker)
    }

    /// `VTABLE.cancel`.
    ///
    /// # Safety
    /// As for [`TaskCell::poll_raw`].
    unsafe fn cancel_raw(header: NonNull<Header>) {
        // SAFETY: as in `poll_raw`.
        let cell = unsafe { header.cast::<TaskCell<F>>().as_ref() };
        cell.cancel();
    }

    /// `VTABLE.dealloc`: frees the cell, on whatever thread gave back its
    /// last reference. By then the runtime's thread has dropped the future
    /// and the output (see [`TaskCell`]), so what is dropped here is `Send`
    /// (the header's `Shared`) or empty. Were either still there, the cell
    /// is leaked instead: neither is ever dropped off the runtime's thread
    /// (and a debug build panics, on whatever thread frees).
    ///
    /// # Safety
    /// `header` starts a `TaskCell<F>` made by `allocate` whose last
    /// reference is gone.
    unsafe fn dealloc(header: NonNull<Header>) {
        // SAFETY: made by `Box::leak` in `allocate`, and unreachable by
        // anybody else now (see `waker::release`, whose last decrement makes
        // the other holders' writes visible here). Taking the box back moves
        // nothing: the pinned future stays where it is.
        let mut cell = unsafe { Box::from_raw(header.cast::<TaskCell<F>>().as_ptr()) };
        let empty = cell.future.get_mut().is_none() && cell.head.state.get_mut().is_empty();
        if empty {
            drop(cell);
        } else {
            std::mem::forget(cell);
        }
        debug_assert!(empty, "a task was freed with its future or output in it");
    }

    /// Claims the task's pending wake (so that a wake during the poll
    /// queues it again) and polls the future once with the task's own
    /// waker. `Ready` once the task is over: it finished (its outcome is
    /// stored for the handle), or it was aborted during this poll and its
    /// future has been dropped.
    fn poll_task(&self, waker: &Waker) -> Poll<()> {
        self.head.header.take_wake();
        // The table never polls a task re-entrantly (a poll pass is not
        // re-entered), so the borrow cannot fail.
        let Ok(mut held) = self.future.try_borrow_mut() else {
            return Poll::Pending;
        };
        let Some(future) = held.as_mut() else {
            return Poll::Ready(());
        };
        // SAFETY: the cell never moves (it is a leaked `Box` from
        // `allocate` until `dealloc`, and nothing moves out of it), and
        // `future` is structurally pinned in it: it is never moved out of
        // its `Option`, only dropped in place, here or in `cancel`.
        let future = unsafe { Pin::new_unchecked(future) };
        let mut cx = Context::from_waker(waker);
        let polled = catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx)));
        if self.cancel_pending.get() {
            // Aborted during its own poll: the table has let go of it, and
            // its handle holds the cancelled outcome, so whatever the poll
            // gave is dropped, and so is the future, which nothing else
            // would drop (it may even hold its own handle). The poll's own
            // reference keeps the cell alive until then.
            *held = None;
            return Poll::Ready(());
        }
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(v)) => Ok(v),
            Err(payload) => Err(JoinError::panic(payload)),
        };
        drop(held);
        JoinState::complete(&self.head.state, outcome);
        Poll::Ready(())
    }

    /// Drops the future, first telling the handle that the task was
    /// cancelled unless it had finished. A task being polled cannot drop
    /// its future: the poll drops it as it returns.
    fn cancel(&self) {
        // Does nothing if the task already produced its outcome.
        JoinState::complete(&self.head.state, Err(JoinError::cancelled()));
        match self.future.try_borrow_mut() {
            Ok(mut held) => *held = None,
            Err(_) => self.cancel_pending.set(true),
        }
    }
}

/// The table's reference to a task. Dropping it drops the future (and tells
/// the handle the task was cancelled, unless it had finished) before the
/// reference goes, so the table drops it only outside its borrow: a
/// future's `Drop` may spawn or abort.
struct OwnedTask(TaskRef);

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A runtime's executor state, shared (weakly) with join handles.
pub(crate) struct Core {
    pub(crate) handle: Handle,
    pub(crate) shared: Arc<Shared>,
    /// The live tasks. A task stays in its slot while it is polled (the poll
    /// pass holds a reference of its own and no borrow), so a poll that spawns,
    /// aborts or wakes finds the table free.
    tasks: RefCell<SlotMap<TaskKey, OwnedTask>>,
    /// Set when the runtime shuts down: spawning then fails.
    closed: Cell<bool>,
    /// Set while `block_on` runs, to refuse re-entry.
    pub(crate) running: Cell<bool>,
    batch: RefCell<VecDeque<TaskKey>>,
}

impl Core {
    pub(crate) fn new(handle: Handle, shared: Arc<Shared>) -> Rc<Core> {
        Rc::new(Core {
            handle,
            shared,
            tasks: RefCell::new(SlotMap::with_key()),
            closed: Cell::new(false),
            running: Cell::new(false),
            batch: RefCell::new(VecDeque::new()),
        })
    }

    /// Adds a task and queues its first poll.
    pub(crate) fn spawn<F>(self: &Rc<Core>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        if self.closed.get() {
            return JoinHandle::failed();
        }
        let Ok(mut tasks) = self.tasks.try_borrow_mut() else {
            return JoinHandle::failed();
        };
        let mut join: Option<JoinRef<F::Output>> = None;
        tasks.insert_with_key(|key| {
            let (task, handle) = TaskCell::allocate(key, self.shared.clone(), future);
            // Queues the first poll; waking touches the wake queue, not the table.
            task.wake();
            join = Some(handle);
            OwnedTask(task)
        });
        drop(tasks);
        // `insert_with_key` always runs its closure.
        let Some(join) = join else {
            return JoinHandle::failed();
        };
        JoinHandle::new(join, Rc::downgrade(self))
    }

    /// Number of live tasks.
    pub(crate) fn task_count(&self) -> usize {
        self.tasks.try_borrow().map(|t| t.len()).unwrap_or(0)
    }

    /// Polls every task queued when the pass starts (tasks woken during the
    /// pass wait for the next one, after the loop had a turn). Returns how
    /// many were polled.
    pub(crate) fn run_ready(&self) -> usize {
        let Ok(mut batch) = self
            .batch
            .try_borrow_mut()
            .map(|mut b| std::mem::take(&mut *b))
        else {
            return 0;
        };
        self.shared.take_queue(&mut batch);
        let n = batch.len();
        while let Some(key) = batch.pop_front() {
            // A poll catches its future's panic, but the drops after it
            // (the future, a detached task's output) and the wake of the
            // handle's awaiter are user code too. Their panic goes on to
            // `block_on`'s caller; the tasks behind it in this pass are
            // still marked queued, so no later wake would queue them: they
            // go back to the front of the queue, for the next pass. Only a
            // task that is over can panic there: it leaves the table.
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.poll_task(key))) {
                self.shared.requeue_front(&mut batch);
                self.remove(key);
                resume_unwind(panic);
            }
        }
        if let Ok(mut b) = self.batch.try_borrow_mut() {
            *b = batch;
        }
        n
    }

    fn poll_task(&self, key: TaskKey) {
        let task = match self.tasks.try_borrow() {
            Ok(tasks) => match tasks.get(key) {
                Some(owned) => owned.0.clone(),
                None => return,
            },
            Err(_) => return,
        };
        if task.poll().is_ready() {
            self.remove(key);
        }
    }

    /// Drops a task unfinished (or, if it is being polled, has the poll
    /// drop it as it returns).
    pub(crate) fn abort(&self, key: TaskKey) {
        self.remove(key);
    }

    /// Takes a task out of the table and drops the table's reference
    /// outside the borrow: a future's `Drop` may spawn or abort.
    fn remove(&self, key: TaskKey) {
        let task = self
            .tasks
            .try_borrow_mut()
            .ok()
            .and_then(|mut t| t.remove(key));
        drop(task);
    }

    /// Refuses new tasks and drops every task, repeatedly, until none is left
    /// (a task's Drop may not spawn, but it may wake or abort others).
    ///
    /// A task's drop may panic: the others are still dropped, and the first
    /// panic is returned for the caller to resume once the loop is gone
    /// too. The runtime may be dropped while a panic unwinds, where one more
    /// that got out would abort the process.
    pub(crate) fn shutdown(&self) -> Option<Box<dyn Any + Send>> {
        self.closed.set(true);
        self.shared.close();
        let mut panicked = None;
        loop {
            let all: Vec<OwnedTask> = match self.tasks.try_borrow_mut() {
                Ok(mut t) => t.drain().map(|(_, task)| task).collect(),
                Err(_) => break,
            };
            if all.is_empty() {
                break;
            }
            for task in all {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| drop(task))) {
                    panicked.get_or_insert(panic);
                }
            }
        }
        panicked
    }
}

// The current runtimes of this thread, innermost last.
thread_local! {
    static CURRENT: RefCell<Vec<Weak<Core>>> = const { RefCell::new(Vec::new()) };
}

/// The thread's current runtime: the innermost one running `block_on`, or
/// else the newest live one. A runtime that is merely alive (made inside a
/// task, say) must not take tasks, timers and sockets from the one that
/// runs: nothing would drive them.
pub(crate) fn current() -> Option<Rc<Core>> {
    with_current(Rc::clone)
}

/// Whether `handle` is the loop of the runtime [`current`] would return
/// (`None` without a runtime), without cloning either: a check on a hot
/// path (a multishot stream's read).
pub(crate) fn current_loop_is(handle: &Handle) -> Option<bool> {
    with_current(|core| core.handle.same_loop(handle))
}

/// `f` of the runtime [`current`] picks: the innermost running one, else
/// the newest live one.
fn with_current<R>(f: impl Fn(&Rc<Core>) -> R) -> Option<R> {
    CURRENT
        .try_with(|c| {
            let stack = c.borrow();
            let mut newest = None;
            for core in stack.iter().rev().filter_map(Weak::upgrade) {
                if core.running.get() {
                    return Some(f(&core));
                }
                newest.get_or_insert_with(|| f(&core));
            }
            newest
        })
        .ok()
        .flatten()
}

/// Whether a runtime is current on this thread (cheaper than [`current`]).
pub(crate) fn in_runtime() -> bool {
    CURRENT
        .try_with(|c| c.borrow().iter().any(|w| w.strong_count() > 0))
        .unwrap_or(false)
}

/// Makes `core` the thread's current runtime.
pub(crate) fn push_current(core: &Rc<Core>) {
    let _ = CURRENT.try_with(|c| c.borrow_mut().push(Rc::downgrade(core)));
}

/// Undoes the latest [`push_current`] of `core`, and forgets dead entries.
pub(crate) fn pop_current(core: &Rc<Core>) {
    let _ = CURRENT.try_with(|c| {
        let mut c = c.borrow_mut();
        if let Some(pos) = c
            .iter()
            .rposition(|w| std::ptr::eq(w.as_ptr(), Rc::as_ptr(core)))
        {
            c.remove(pos);
        }
        c.retain(|w| w.strong_count() > 0);
    });
}

/// The task allocation without a loop (its reference count, its vtable, the
/// frees on other threads), for Miri: `cargo +nightly miri test --lib
/// rt::task::raw`.
#[cfg(test)]
mod raw {
    use std::cell::RefCell;
    use std::future::{Future, poll_fn};
    use std::pin::Pin;
    use std::rc::{Rc, Weak};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};
    use std::thread::{self, ThreadId};

    use slotmap::SlotMap;

    use super::{OwnedTask, TaskCell};
    use crate::rt::join::{JoinHandle, JoinRef};
    use crate::rt::waker::{Shared, TaskKey, TaskRef};

    /// Fails to compile if `T` is `Send` or `Sync`: an impl for every `T`
    /// and one more for `T: Send` (or `Sync`) leave `_` ambiguous exactly
    /// when the second applies (as `static_assertions` does it).
    macro_rules! assert_neither_send_nor_sync {
        ($t:ty) => {
            const _: fn() = || {
                trait AmbiguousIfSend<A> {
                    fn some_item() {}
                }
                impl<T: ?Sized> AmbiguousIfSend<()> for T {}
                impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}
                let _ = <$t as AmbiguousIfSend<_>>::some_item;
                trait AmbiguousIfSync<A> {
                    fn some_item() {}
                }
                impl<T: ?Sized> AmbiguousIfSync<()> for T {}
                impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}
                let _ = <$t as AmbiguousIfSync<_>>::some_item;
            };
        };
    }

    // The references that reach past the header (the future, the output)
    // never leave the runtime's thread: were one `Send`, the output (and
    // through `TaskRef::poll`, the future) could be reached from another
    // thread. Even with a `Send + Sync` output.
    assert_neither_send_nor_sync!(TaskRef);
    assert_neither_send_nor_sync!(JoinRef<u8>);
    assert_neither_send_nor_sync!(JoinHandle<u8>);
    assert_neither_send_nor_sync!(OwnedTask);

    /// Records the thread it is dropped on; holds an `Rc`, so is not `Send`.
    struct DropsOn(Arc<Mutex<Option<ThreadId>>>, #[allow(dead_code)] Rc<()>);

    impl Drop for DropsOn {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(thread::current().id());
        }
    }

    /// Panics when dropped.
    struct PanicsOnDrop;

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("dropped");
        }
    }

    fn drops_on() -> (DropsOn, Arc<Mutex<Option<ThreadId>>>) {
        let at = Arc::new(Mutex::new(None));
        (DropsOn(at.clone(), Rc::new(())), at)
    }

    /// A task as `Core::spawn` makes one: the table's reference, the handle.
    fn spawn<F: Future + 'static>(
        shared: &Arc<Shared>,
        keys: &mut SlotMap<TaskKey, ()>,
        future: F,
    ) -> (OwnedTask, JoinHandle<F::Output>) {
        let (task, join) = TaskCell::allocate(keys.insert(()), shared.clone(), future);
        task.wake();
        (OwnedTask(task), JoinHandle::new(join, Weak::new()))
    }

    fn poll_handle<T: 'static>(
        h: &mut JoinHandle<T>,
        waker: &Waker,
    ) -> Poll<Result<T, super::JoinError>> {
        Pin::new(h).poll(&mut Context::from_waker(waker))
    }

    /// A future that hands its waker out on its first poll, then finishes
    /// with `out` when polled again.
    fn park_once<T>(slot: Arc<Mutex<Option<Waker>>>, out: T) -> impl Future<Output = T> {
        let mut out = Some(out);
        poll_fn(move |cx| {
            let mut s = slot.lock().unwrap();
            if s.is_some() {
                return Poll::Ready(out.take().unwrap());
            }
            *s = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    #[test]
    fn a_task_runs_and_its_handle_gets_the_output() {
        let shared = Arc::new(Shared::without_loop());
        let mut keys = SlotMap::with_key();
        let (task, mut h) = spawn(&shared, &mut keys, async { 7 });
        assert!(task.0.poll().is_ready());
        assert!(h.is_finished());
        drop(task);
        assert!(matches!(
            poll_handle(&mut h, Waker::noop()),
            Poll::Ready(Ok(7))
        ));
        assert!(
            matches!(poll_handle(&mut h, Waker::noop()), Poll::Ready(Err(e)) if e.is_cancelled())
        );
    }

    #[test]
    fn wakes_from_other_threads_queue_the_task_once() {
        let shared = Arc::new(Shared::without_loop());
        let mut keys = SlotMap::with_key();
        let slot = Arc::new(Mutex::new(None));
        let (task, h) = spawn(&shared, &mut keys, park_once(slot.clone(), ()));
        let mut queue = Default::default();
        shared.take_queue(&mut queue);
        assert_eq!(queue.len(), 1, "spawning queues the first poll");
        queue.clear();
        assert!(task.0.poll().is_pending());
        let waker = slot.lock().unwrap().clone().unwrap();
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let w = waker.clone();
                thread::spawn(move || if i == 0 { w.wake() } else { w.wake_by_ref() })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        shared.take_queue(&mut queue);
        assert_eq!(queue.len(), 1);
        assert!(task.0.poll().is_ready());
        drop((task, h, waker));
    }

    /// The last references are wakers on other threads, given back at the
    /// same time: one of them frees the task, whose future and output were
    /// dropped here.
    #[test]
    fn the_last_wakers_on_other_threads_free_but_drop_nothing() {
        let home = thread::current().id();
        let shared = Arc::new(Shared::without_loop());
        let mut keys = SlotMap::with_key();
        let (held, future_at) = drops_on();
        let (out, out_at) = drops_on();
        let (parked_slot, done_slot) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
        let ps = parked_slot.clone();
        let (parked, parked_h) = spawn(&shared, &mut keys, async move {
            let _held = held;
            park_once(ps, ()).await;
            std::future::pending::<()>().await;
        });
        let (done, done_h) = spawn(&shared, &mut keys, park_once(done_slot.clone(), out));
        assert!(parked.0.poll().is_pending());
        assert!(done.0.poll().is_pending());
        assert!(done.0.poll().is_ready());
        drop(done);
        // The output waits for its handle, which drops it here.
        assert!(out_at.lock().unwrap().is_none());
        drop(done_h);
        assert_eq!(*out_at.lock().unwrap(), Some(home));
        // Cancelling drops the future here.
        drop((parked, parked_h));
        assert_eq!(*future_at.lock().unwrap(), Some(home));
        for slot in [parked_slot, done_slot] {
            let w = slot.lock().unwrap().take().unwrap();
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let w = w.clone();
                    thread::spawn(move || w.wake())
                })
                .collect();
            drop(w);
            for t in threads {
                t.join().unwrap();
            }
        }
        assert_eq!(*out_at.lock().unwrap(), Some(home));
        assert_eq!(*future_at.lock().unwrap(), Some(home));
    }

    /// The handle's awaiter's waker goes with the handle, not with the task.
    #[test]
    fn dropping_the_handle_drops_its_awaiters_waker() {
        let shared = Arc::new(Shared::without_loop());
        let mut keys = SlotMap::with_key();
        let slot = Arc::new(Mutex::new(None));
        let (task, mut h) = spawn(&shared, &mut keys, park_once(slot.clone(), ()));
        let awaiter = TaskRef::main(TaskKey::default(), shared.clone(), false);
        let waker = awaiter.waker();
        assert!(poll_handle(&mut h, &waker).is_pending());
        drop(waker);
        drop(h);
        // The handle let go of its clone of the awaiter's waker: were it
        // still in the task, the free below (on another thread) would find
        // it, leak the task and panic (a debug build's check).
        assert!(task.0.poll().is_pending());
        let w = slot.lock().unwrap().take().unwrap();
        drop(task);
        thread::spawn(move || drop(w)).join().unwrap();
        drop(awaiter);
    }

    /// A task whose own poll drops the table's reference (an abort from
    /// inside) is kept alive by the poll's, and its future is dropped as the
    /// poll returns.
    #[test]
    fn a_task_aborted_during_its_poll_is_dropped_after_it() {
        let shared = Arc::new(Shared::without_loop());
        let mut keys = SlotMap::with_key();
        let table: Rc<RefCell<Option<OwnedTask>>> = Rc::default();
        let (held, future_at) = drops_on();
        let t = table.clone();
        let (task, mut h) = spawn(&shared, &mut keys, async move {
            let _held = held;
            drop(t.borrow_mut().take());
            assert!(future_at_is_none(&_held));
            5
        });
        let poll_ref = task.0.clone();
        *table.borrow_mut() = Some(task);
        assert!(poll_ref.poll().is_ready());
        assert!(future_at.lock().unwrap().is_some());
        drop(poll_ref);
        assert!(
            matches!(poll_handle(&mut h, Waker::noop()), Poll::Ready(Err(e)) if e.is_cancelled())
        );
    }

    fn future_at_is_none(d: &DropsOn) -> bool {
        d.0.lock().unwrap().is_none()
    }

    #[test]
    fn a_panic_in_poll_is_caught_for_the_handle() {
        let shared = Arc::new(Shared::without_loop());
        let mut keys = SlotMap::with_key();
        let (task, mut h) = spawn(&shared, &mut keys, async { panic!("boom") });
        assert!(task.0.poll().is_ready());
        drop(task);
        assert!(matches!(poll_handle(&mut h, Waker::noop()), Poll::Ready(Err(e)) if e.is_panic()));
    }

    /// A task whose future holds its own handle (a reference to itself):
    /// finishing drops the future, and with it the handle and the output
    /// the handle held, here; the last waker, elsewhere, only frees (Miri
    /// reports a leak if a reference is left over).
    #[test]
    fn a_task_holding_its_own_handle_drops_all_here_when_it_finishes() {
        let home = thread::current().id();
        let shared = Arc::new(Shared::without_loop());
        let mut keys = SlotMap::with_key();
        let slot = Arc::new(Mutex::new(None));
        let (out, out_at) = drops_on();
        let own: Rc<RefCell<Option<JoinHandle<DropsOn>>>> = Rc::default();
        let mine = own.clone();
        // A `poll_fn`, not an `async` block: its captures (the handle)
        // outlive its output, until the future itself is dropped.
        let (mut out, mut held) = (Some(out), None);
        let (task, h) = spawn(
            &shared,
            &mut keys,
            poll_fn(move |_| match held.take() {
                None => {
                    held = mine.borrow_mut().take();
                    Poll::Pending
                }
                Some(h) => {
                    held = Some(h);
                    Poll::Ready(out.take().unwrap())
                }
            }),
        );
        *own.borrow_mut() = Some(h);
        assert!(task.0.poll().is_pending());
        let w = task.0.waker();
        *slot.lock().unwrap() = Some(w);
        assert!(own.borrow().is_none(), "the future took its handle");
        assert!(task.0.poll().is_ready());
        assert!(out_at.lock().unwrap().is_none(), "kept for the handle");
        drop(task);
        assert_eq!(*out_at.lock().unwrap(), Some(home));
        let w = slot.lock().unwrap().take().unwrap();
        thread::spawn(move || w.wake()).join().unwrap();
    }

    /// A future whose drop panics, cancelled by the table's reference: the
    /// panic goes on, the future counts as dropped (it is), and the last
    /// waker, elsewhere, frees without the debug check's panic.
    #[test]
    fn a_future_whose_drop_panics_is_dropped_all_the_same() {
        let shared = Arc::new(Shared::without_loop());
        let mut keys = SlotMap::with_key();
        let slot = Arc::new(Mutex::new(None));
        let s = slot.clone();
        let (task, mut h) = spawn(&shared, &mut keys, async move {
            let _p = PanicsOnDrop;
            park_once(s, ()).await;
            std::future::pending::<()>().await;
        });
        assert!(task.0.poll().is_pending());
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(task)));
        assert!(dropped.is_err());
        assert!(
            matches!(poll_handle(&mut h, Waker::noop()), Poll::Ready(Err(e)) if e.is_cancelled())
        );
        drop(h);
        let w = slot.lock().unwrap().take().unwrap();
        thread::spawn(move || drop(w)).join().unwrap();
    }

    /// A detached task whose output's drop panics as the poll stores it:
    /// the panic leaves the poll (as `run_ready` expects) with the poll's
    /// reference given back, and the table's drop still drops the future.
    #[test]
    fn a_detached_output_whose_drop_panics_leaves_the_task_whole() {
        let shared = Arc::new(Shared::without_loop());
        let mut keys = SlotMap::with_key();
        let (held, future_at) = drops_on();
        let slot = Arc::new(Mutex::new(None));
        let s = slot.clone();
        // A `poll_fn`: `held` stays in the future after its output.
        let mut parked = Box::pin(park_once(s, ()));
        let (task, h) = spawn(
            &shared,
            &mut keys,
            poll_fn(move |cx| {
                let _ = &held;
                parked.as_mut().poll(cx).map(|()| PanicsOnDrop)
            }),
        );
        drop(h);
        assert!(task.0.poll().is_pending());
        let poll_ref = task.0.clone();
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_ref.poll()));
        assert!(polled.is_err());
        drop(poll_ref);
        assert!(future_at.lock().unwrap().is_none(), "the table drops it");
        drop(task);
        assert!(future_at.lock().unwrap().is_some());
        let w = slot.lock().unwrap().take().unwrap();
        thread::spawn(move || drop(w)).join().unwrap();
    }

    #[test]
    fn a_main_header_is_freed_by_its_last_waker() {
        let shared = Arc::new(Shared::without_loop());
        let main = TaskRef::main(TaskKey::default(), shared, true);
        assert!(main.take_wake());
        let w = main.waker();
        assert!(main.poll().is_ready());
        main.cancel();
        drop(main);
        thread::spawn(move || w.wake()).join().unwrap();
    }
}
