//! The task table and the poll pass: what runs tasks between loop iterations.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
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
    /// Claims the task's pending wake (so that a wake during the poll
    /// queues it again) and polls the future once with the task's own
    /// waker. `Ready` once the task is over: it finished (its outcome is
    /// stored for the handle), or it was aborted during this poll and its
    /// future has been dropped.
    fn poll_task(&self) -> Poll<()>;

    /// Drops the future, first telling the handle that the task was
    /// cancelled unless it had finished. A task being polled cannot drop
    /// its future: the poll drops it as it returns.
    fn cancel(&self);
}

/// A spawned task: its future, the outcome its [`JoinHandle`] waits for and
/// its waker, in one allocation that the table and the handle share through
/// an `Rc`; it never leaves the runtime's thread. The wakers share only the
/// [`Header`], a second, `Arc`-counted allocation: all that another thread
/// can reach.
struct TaskCell<F: Future> {
    header: Arc<Header>,
    /// Made once, at spawn; every poll lends it.
    waker: Waker,
    /// The future, until it finishes or is cancelled. Structurally pinned:
    /// it is only ever dropped in place (`*future = None`), never moved out.
    future: RefCell<Option<F>>,
    join: RefCell<JoinState<F::Output>>,
    /// Cancelled while being polled: the poll drops the future as it
    /// returns.
    cancel_pending: Cell<bool>,
}

impl<F: Future> JoinSlot<F::Output> for TaskCell<F> {
    fn join_state(&self) -> &RefCell<JoinState<F::Output>> {
        &self.join
    }
}

impl<F: Future> Task for TaskCell<F> {
    fn poll_task(&self) -> Poll<()> {
        self.header.take_wake();
        // The table never polls a task re-entrantly (a poll pass is not
        // re-entered), so the borrow cannot fail.
        let Ok(mut held) = self.future.try_borrow_mut() else {
            return Poll::Pending;
        };
        let Some(future) = held.as_mut() else {
            return Poll::Ready(());
        };
        // SAFETY: the cell never moves (it lives in an `Rc` from `spawn`
        // to its drop, and nothing moves out of that `Rc`), and `future`
        // is structurally pinned in it: it is never moved out of its
        // `Option`, only dropped in place, here or in `cancel`.
        let future = unsafe { Pin::new_unchecked(future) };
        let mut cx = Context::from_waker(&self.waker);
        let polled = catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx)));
        if self.cancel_pending.get() {
            // Aborted during its own poll: the table has let go of it, and
            // its handle holds the cancelled outcome, so whatever the poll
            // gave is dropped, and so is the future, which nothing else
            // would drop (it may even hold its own handle).
            *held = None;
            return Poll::Ready(());
        }
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(v)) => Ok(v),
            Err(payload) => Err(JoinError::panic(payload)),
        };
        drop(held);
        JoinState::complete(&self.join, outcome);
        Poll::Ready(())
    }

    fn cancel(&self) {
        // Does nothing if the task already produced its outcome.
        JoinState::complete(&self.join, Err(JoinError::cancelled()));
        match self.future.try_borrow_mut() {
            Ok(mut held) => *held = None,
            Err(_) => self.cancel_pending.set(true),
        }
    }
}

/// The table's reference to a task. Dropping it drops the future (and tells
/// the handle the task was cancelled, unless it had finished), so the table
/// drops it only outside its borrow: a future's `Drop` may spawn or abort.
struct OwnedTask(Rc<dyn Task>);

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
    /// pass holds an `Rc` of its own and no borrow), so a poll that spawns,
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
        let key = tasks.insert_with_key(|key| {
            let header = Arc::new(Header::new(key, self.shared.clone(), false));
            let cell = Rc::new(TaskCell {
                waker: header.clone().into_waker(),
                header,
                future: RefCell::new(Some(future)),
                join: RefCell::new(JoinState::new()),
                cancel_pending: Cell::new(false),
            });
            // Queues the first poll; waking touches the wake queue, not the table.
            cell.header.wake();
            join = Some(cell.clone());
            OwnedTask(cell)
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
        if task.poll_task().is_ready() {
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
