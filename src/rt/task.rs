//! The task table and the poll pass: what runs tasks between loop iterations.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use slotmap::SlotMap;

use super::join::{JoinError, JoinHandle, JoinState};
use super::waker::{Header, Shared, TaskKey};
use crate::reactor::Handle;

/// A spawned task as the table holds it: it polls itself with its own
/// waker, which lives in the same allocation as the future (one allocation
/// less per task than a waker of its own, and no reference count touched
/// per poll).
trait Task {
    fn poll_task(self: Pin<&mut Self>) -> Poll<()>;
}

type BoxTask = Pin<Box<dyn Task>>;

struct TaskSlot {
    /// `None` while the task is being polled.
    future: Option<BoxTask>,
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

pin_project! {
    /// A spawned future plus where its output goes and its waker; catches
    /// panics.
    struct TaskFuture<F: Future> {
        #[pin]
        future: F,
        state: Rc<RefCell<JoinState<F::Output>>>,
        waker: Waker,
    }

    impl<F: Future> PinnedDrop for TaskFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Does nothing if the task already produced its outcome.
            JoinState::complete(&this.state, Err(JoinError::cancelled()));
        }
    }
}

impl<F: Future> Task for TaskFuture<F> {
    fn poll_task(self: Pin<&mut Self>) -> Poll<()> {
        let this = self.project();
        let future = this.future;
        let mut cx = Context::from_waker(this.waker);
        match catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                JoinState::complete(this.state, Ok(v));
                Poll::Ready(())
            }
            Err(payload) => {
                JoinState::complete(this.state, Err(JoinError::panic(payload)));
                Poll::Ready(())
            }
        }
    }
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
        let state = JoinState::new();
        let Ok(mut tasks) = self.tasks.try_borrow_mut() else {
            return JoinHandle::failed();
        };
        let key = tasks.insert_with_key(|key| {
            let header = Header::new(key, self.shared.clone(), false);
            let task: BoxTask = Box::pin(TaskFuture {
                future,
                state: state.clone(),
                waker: Waker::from(header.clone()),
            });
            TaskSlot {
                future: Some(task),
                header,
                aborted: false,
            }
        });
        // Queues the first poll; waking touches the wake queue, not the table.
        std::task::Wake::wake_by_ref(&tasks[key].header);
        drop(tasks);
        JoinHandle::new(state, Rc::downgrade(self), key)
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
            slot.future.take().inspect(|_| {
                slot.header.take_wake();
            })
        };
        let Some(mut future) = taken else {
            return;
        };
        let done = future.as_mut().poll_task().is_ready();
        let leftover = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(key) {
                Some(slot) if !done && !slot.aborted => {
                    slot.future = Some(future);
                    None
                }
                Some(_) => {
                    tasks.remove(key);
                    Some(future)
                }
                None => Some(future),
            }
        };
        // Dropped outside the borrow: a future's Drop may spawn or abort.
        drop(leftover);
    }

    /// Drops a task unfinished (or marks it, if it is being polled).
    pub(crate) fn abort(&self, key: TaskKey) {
        let future = {
            let Ok(mut tasks) = self.tasks.try_borrow_mut() else {
                return;
            };
            match tasks.get_mut(key) {
                Some(slot) if slot.future.is_some() => tasks.remove(key).and_then(|s| s.future),
                Some(slot) => {
                    slot.aborted = true;
                    None
                }
                None => None,
            }
        };
        drop(future);
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
