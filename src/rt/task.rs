//! The task table and the poll pass: what runs tasks between loop iterations.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use slotmap::SlotMap;

use super::join::{JoinError, JoinHandle, JoinRef, JoinSlot, JoinState};
use super::waker::{Header, Shared, TaskKey};
use crate::reactor::Handle;

/// A spawned task as the table sees it, type-erased.
trait Task {
    /// Claims the task's pending wake (so that a wake during the poll
    /// queues it again) and polls the future once with `waker` (the task's
    /// own). `Ready` once the task has finished and its outcome is stored
    /// for the handle.
    fn poll_task(&self, waker: &Waker) -> Poll<()>;

    /// Drops the future, first telling the handle that the task was
    /// cancelled unless it had finished. Returns whether the future is
    /// gone (it always is, unless it was being polled).
    fn cancel(&self) -> bool;
}

/// A spawned task in one allocation: its wake state, its future, and the
/// outcome its [`JoinHandle`] waits for. The table, the handle and every
/// waker share it through an `Arc`.
///
/// Wakers are `Send + Sync`, so they can clone, wake and drop the cell on
/// any thread, and the last of them may free it there. The future and the
/// output need not be `Send`; they stay on the runtime's thread because
/// nothing but the runtime's thread ever touches them, and because both
/// are gone before a waker can be the last owner: the table drops the
/// future when it lets go of the task ([`OwnedTask`]'s `Drop`), and the
/// handle drops a stored output when it is dropped, after which a late
/// outcome is dropped as it is produced (`JoinState::detached`).
struct TaskCell<F: Future> {
    header: Header,
    /// The future, until it finishes or is cancelled. Structurally pinned:
    /// it is only ever dropped in place (`*future = None`), never moved out.
    future: RefCell<Option<F>>,
    join: RefCell<JoinState<F::Output>>,
}

// SAFETY: another thread reaches a `TaskCell` only through a `Waker` (the
// table and the handle are `!Send`). A waker's wake touches only `header`:
// atomics and an `Arc<Shared>`, which is `Send + Sync`. A waker's drop may
// free the cell, running the drop of `future` and `join`; by then `future`
// is `None` and `join` holds no output (see the type's docs: the table and
// the handle empty them on the runtime's thread before they let go, and
// leak the cell instead if they cannot), so no `F` or `F::Output` value is
// touched off the runtime's thread.
unsafe impl<F: Future> Send for TaskCell<F> {}
// SAFETY: as for `Send`: the only code that can run on a shared reference
// from another thread is `Header::wake`, which is thread-safe.
unsafe impl<F: Future> Sync for TaskCell<F> {}

impl<F: Future> JoinSlot<F::Output> for TaskCell<F> {
    fn join_state(&self) -> &RefCell<JoinState<F::Output>> {
        &self.join
    }
}

impl<F: Future + 'static> Wake for TaskCell<F> {
    fn wake(self: Arc<Self>) {
        self.header.wake();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.header.wake();
    }
}

impl<F: Future> Task for TaskCell<F> {
    fn poll_task(&self, waker: &Waker) -> Poll<()> {
        self.header.take_wake();
        // The table never polls a task re-entrantly (it takes the task out
        // of its slot while polling), so the borrow cannot fail.
        let Ok(mut held) = self.future.try_borrow_mut() else {
            return Poll::Pending;
        };
        let Some(future) = held.as_mut() else {
            return Poll::Ready(());
        };
        // SAFETY: the cell never moves (it lives in an `Arc` from `spawn`
        // to its drop, and nothing moves out of that `Arc`), and `future`
        // is structurally pinned in it: it is never moved out of its
        // `Option`, only dropped in place, in `cancel` or with the cell.
        let future = unsafe { Pin::new_unchecked(future) };
        let mut cx = Context::from_waker(waker);
        let outcome = match catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(v)) => Ok(v),
            Err(payload) => Err(JoinError::panic(payload)),
        };
        JoinState::complete(&self.join, outcome);
        Poll::Ready(())
    }

    fn cancel(&self) -> bool {
        // Does nothing if the task already produced its outcome.
        JoinState::complete(&self.join, Err(JoinError::cancelled()));
        match self.future.try_borrow_mut() {
            Ok(mut held) => {
                *held = None;
                true
            }
            Err(_) => false,
        }
    }
}

/// The table's reference to a task. Dropping it drops the future (and tells
/// the handle the task was cancelled, unless it had finished), so the table
/// drops it only outside its borrow: a future's `Drop` may spawn or abort.
struct OwnedTask(Arc<dyn Task>);

impl Drop for OwnedTask {
    fn drop(&mut self) {
        if !self.0.cancel() {
            // The future could not be dropped here, on the runtime's
            // thread (cannot happen: the table never drops a task it is
            // polling). Leak the cell rather than let a waker on another
            // thread drop the future.
            std::mem::forget(self.0.clone());
        }
    }
}

/// A task between polls: the table's reference and the waker it is polled
/// with (made once, at spawn).
struct Parked {
    task: OwnedTask,
    waker: Waker,
}

struct TaskSlot {
    /// `None` while the task is being polled.
    task: Option<Parked>,
    /// Aborted while being polled: drop it once the poll returns.
    aborted: bool,
}

/// A runtime's executor state, shared (weakly) with join handles.
pub(crate) struct Core {
    pub(crate) handle: Handle,
    pub(crate) shared: Arc<Shared>,
    tasks: RefCell<SlotMap<TaskKey, TaskSlot>>,
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
        let key = tasks.insert_with_key(|key| {
            let cell = Arc::new(TaskCell {
                header: Header::new(key, self.shared.clone(), false),
                future: RefCell::new(Some(future)),
                join: RefCell::new(JoinState::new()),
            });
            // Queues the first poll; waking touches the wake queue, not the table.
            cell.header.wake();
            join = Some(cell.clone());
            let waker = Waker::from(cell.clone());
            TaskSlot {
                task: Some(Parked {
                    task: OwnedTask(cell),
                    waker,
                }),
                aborted: false,
            }
        });
        drop(tasks);
        // `insert_with_key` always runs its closure.
        let Some(join) = join else {
            return JoinHandle::failed();
        };
        JoinHandle::new(join, Rc::downgrade(self), key)
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
        for key in batch.drain(..) {
            self.poll_task(key);
        }
        if let Ok(mut b) = self.batch.try_borrow_mut() {
            *b = batch;
        }
        n
    }

    fn poll_task(&self, key: TaskKey) {
        let taken = {
            let Ok(mut tasks) = self.tasks.try_borrow_mut() else {
                return;
            };
            let Some(slot) = tasks.get_mut(key) else {
                return;
            };
            slot.task.take()
        };
        let Some(task) = taken else {
            return;
        };
        let done = task.task.0.poll_task(&task.waker).is_ready();
        let leftover = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(key) {
                Some(slot) if !done && !slot.aborted => {
                    slot.task = Some(task);
                    None
                }
                Some(_) => {
                    tasks.remove(key);
                    Some(task)
                }
                None => Some(task),
            }
        };
        // Dropped outside the borrow: a future's Drop may spawn or abort.
        drop(leftover);
    }

    /// Drops a task unfinished (or marks it, if it is being polled).
    pub(crate) fn abort(&self, key: TaskKey) {
        let task = {
            let Ok(mut tasks) = self.tasks.try_borrow_mut() else {
                return;
            };
            match tasks.get_mut(key) {
                Some(slot) if slot.task.is_some() => tasks.remove(key).and_then(|s| s.task),
                Some(slot) => {
                    slot.aborted = true;
                    None
                }
                None => None,
            }
        };
        drop(task);
    }

    /// Refuses new tasks and drops every task, repeatedly, until none is left
    /// (a task's Drop may not spawn, but it may wake or abort others).
    pub(crate) fn shutdown(&self) {
        self.closed.set(true);
        self.shared.close();
        loop {
            let all: Vec<TaskSlot> = match self.tasks.try_borrow_mut() {
                Ok(mut t) => t.drain().map(|(_, s)| s).collect(),
                Err(_) => return,
            };
            if all.is_empty() {
                break;
            }
            drop(all);
        }
    }
}

// The current runtimes of this thread, innermost last.
thread_local! {
    static CURRENT: RefCell<Vec<Weak<Core>>> = const { RefCell::new(Vec::new()) };
}

/// The innermost live runtime of this thread.
pub(crate) fn current() -> Option<Rc<Core>> {
    CURRENT
        .try_with(|c| c.borrow().iter().rev().find_map(Weak::upgrade))
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
