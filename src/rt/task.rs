//! The task table and the poll pass: what runs tasks between loop iterations.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use slotmap::SlotMap;

use super::join::{JoinError, JoinHandle, JoinRef, JoinSlot, JoinState};
use super::waker::{Header, Shared, TaskKey};
use crate::reactor::Handle;

/// A spawned task as the table sees it, type-erased.
trait Task {
    /// Polls the future once with the task's own waker. `Ready` once the
    /// task has finished and its outcome is stored for the handle.
    fn poll_task(self: Pin<&Self>) -> Poll<()>;

    /// Drops the future, first telling the handle that the task was
    /// cancelled unless it had finished.
    fn cancel(self: Pin<&Self>);
}

/// A spawned task's future and the outcome its [`JoinHandle`] waits for, in
/// one allocation, with the waker it is polled with (a handle to the task's
/// `Header`, which has its own: wakers must be `Send`). The table and the
/// handle share it; the future is dropped when the table lets go (the
/// task finished or was cancelled), the allocation when the handle does too.
struct TaskCell<F: Future> {
    /// The future, until it finishes or is cancelled. Structurally pinned:
    /// it is only ever dropped in place (`*future = None`), never moved out.
    future: RefCell<Option<F>>,
    join: RefCell<JoinState<F::Output>>,
    waker: Waker,
}

impl<F: Future> JoinSlot<F::Output> for TaskCell<F> {
    fn join_state(&self) -> &RefCell<JoinState<F::Output>> {
        &self.join
    }
}

impl<F: Future> Task for TaskCell<F> {
    fn poll_task(self: Pin<&Self>) -> Poll<()> {
        let this = self.get_ref();
        // The table never polls a task re-entrantly (it takes the task out
        // of its slot while polling), so the borrow cannot fail.
        let Ok(mut held) = this.future.try_borrow_mut() else {
            return Poll::Pending;
        };
        let Some(future) = held.as_mut() else {
            return Poll::Ready(());
        };
        // SAFETY: `this` is pinned (a `TaskCell` only lives in a `Pin<Rc<_>>`)
        // and `future` is structurally pinned in it: it is never moved out of
        // its `Option`, only dropped in place, in `cancel` or with the cell.
        let future = unsafe { Pin::new_unchecked(future) };
        let mut cx = Context::from_waker(&this.waker);
        let outcome = match catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(v)) => Ok(v),
            Err(payload) => Err(JoinError::panic(payload)),
        };
        JoinState::complete(&this.join, outcome);
        Poll::Ready(())
    }

    fn cancel(self: Pin<&Self>) {
        let this = self.get_ref();
        // Does nothing if the task already produced its outcome.
        JoinState::complete(&this.join, Err(JoinError::cancelled()));
        if let Ok(mut held) = this.future.try_borrow_mut() {
            *held = None;
        }
    }
}

/// The table's reference to a task. Dropping it drops the future (and tells
/// the handle the task was cancelled, unless it had finished), so the table
/// drops it only outside its borrow: a future's `Drop` may spawn or abort.
struct OwnedTask(Pin<Rc<dyn Task>>);

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.as_ref().cancel();
    }
}

struct TaskSlot {
    /// `None` while the task is being polled.
    task: Option<OwnedTask>,
    header: Arc<Header>,
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
            let header = Header::new(key, self.shared.clone(), false);
            let cell = Rc::pin(TaskCell {
                future: RefCell::new(Some(future)),
                join: RefCell::new(JoinState::new()),
                waker: Waker::from(header.clone()),
            });
            join = Some(cell.clone());
            TaskSlot {
                task: Some(OwnedTask(cell)),
                header,
                aborted: false,
            }
        });
        // Queues the first poll; waking touches the wake queue, not the table.
        std::task::Wake::wake_by_ref(&tasks[key].header);
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
            slot.task.take().inspect(|_| {
                slot.header.take_wake();
            })
        };
        let Some(task) = taken else {
            return;
        };
        let done = task.0.as_ref().poll_task().is_ready();
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
