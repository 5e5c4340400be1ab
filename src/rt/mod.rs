//! The executor: runs futures on the event loop's thread.
//!
//! A [`Runtime`] owns an [`EventLoop`]. [`Runtime::block_on`] alternates
//! between two things until its future is done:
//!
//! 1. a *poll pass*: every task woken so far is polled once, in wake order;
//! 2. one loop iteration ([`Handle::run_once`]): it runs one handler (a
//!    readiness event, a timer…), whose waker calls queue tasks for the next
//!    pass. It blocks in `io_uring_enter` only when no task is queued, and
//!    never blocks while one is. Completions of the futures' own io_uring
//!    operations need no handler: reaping them stores each result in the
//!    loop's table of operations and queues its task, so one iteration can
//!    queue every task whose operation finished. Sleeps need none either:
//!    a sleep's timer in the loop holds the task's waker, and one iteration
//!    wakes every sleep that is due (up to the next callback timer, so
//!    equal deadlines still fire in the order they were added).
//!
//! Futures submit their io_uring operations while being polled; the SQEs wait
//! in the ring until the loop next enters the kernel, so the operations of
//! every task polled in between go to the kernel in one `io_uring_enter`.
//! Polling itself makes no syscall, but for a stream's send on a loop
//! that is not batching (see [`crate::net`]), which is sent directly.
//!
//! Tasks need not be `Send`: they only ever run on the runtime's thread.
//! Wakers are `Send + Sync`. A wake on the runtime's thread only queues the
//! task (no syscall); a wake from another thread also writes the loop's
//! eventfd (once per burst), so a loop blocked in `io_uring_enter` returns.
//! Waking a task that is already queued does nothing.
//!
//! ```
//! use ringloop::rt;
//! let out = rt::block_on(async {
//!     let task = rt::spawn(async { 6 * 7 });
//!     rt::yield_now().await;
//!     task.await.unwrap()
//! });
//! assert_eq!(out, 42);
//! ```

mod join;
mod task;
mod waker;

use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use slotmap::Key;

use crate::error::{Error, Result};
use crate::reactor::{EventLoop, Handle};

pub use join::{JoinError, JoinHandle};
use task::Core;
use waker::{Shared, TaskKey, TaskRef};

/// An executor bound to one [`EventLoop`], on one thread.
///
/// Dropping the runtime drops every unfinished task (their join handles then
/// give a cancelled [`JoinError`]) and then the loop, which cancels the
/// operations still in flight and waits for the kernel to let go of their
/// buffers. A panic in a task's drop goes on to the caller once all that is
/// done (the first one, if several), or is dropped if the runtime is being
/// dropped by a panic already.
pub struct Runtime {
    core: Rc<Core>,
    /// `None` only during drop.
    lp: Option<EventLoop>,
}

impl Runtime {
    /// A runtime on a new loop with the default configuration.
    ///
    /// Fails if io_uring is unavailable (see [`Error::Unavailable`]).
    pub fn new() -> Result<Runtime> {
        Runtime::with_loop(EventLoop::new()?)
    }

    /// A runtime on a loop built elsewhere (see [`EventLoop::builder`]).
    ///
    /// Events already on the loop keep working alongside tasks.
    pub fn with_loop(lp: EventLoop) -> Result<Runtime> {
        let shared = Arc::new(Shared::new(lp.remote()?, lp.handle().loop_id()));
        lp.handle().set_inline_waker(&waker::TASK_WAKER)?;
        let core = Core::new(lp.handle(), shared);
        task::push_current(&core);
        Ok(Runtime { core, lp: Some(lp) })
    }

    /// The loop's handle, for registering events directly.
    pub fn handle(&self) -> Handle {
        self.core.handle.clone()
    }

    /// Spawns a task; it first runs during a [`Runtime::block_on`] call.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.core.spawn(future)
    }

    /// Runs the loop and the runtime's tasks until `future` completes, and
    /// returns its output. While it runs, this runtime is the thread's
    /// current one (for [`spawn`], [`current_handle`], timers and sockets).
    ///
    /// # Panics
    /// If called re-entrantly on the same runtime (from one of its tasks, or
    /// from a handler of its loop), or if `io_uring_enter` itself fails (an
    /// error that leaves the loop unusable). A panic in `future` itself
    /// propagates; panics in spawned tasks do not (see [`JoinError`]).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        assert!(
            !self.core.running.get(),
            "Runtime::block_on called from inside the same runtime; \
             spawn the future instead, or await it"
        );
        let _enter = Enter::new(&self.core);
        let main = TaskRef::main(TaskKey::null(), self.core.shared.clone(), true);
        let waker = main.waker();
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        let handle = &self.core.handle;
        loop {
            if main.take_wake()
                && let Poll::Ready(v) = future.as_mut().poll(&mut cx)
            {
                return v;
            }
            self.core.run_ready();
            let busy = main.queued.load(std::sync::atomic::Ordering::Acquire)
                || self.core.shared.has_queued();
            let turn = if busy {
                // Let completions in without blocking, then poll again.
                handle.run_once_without_blocking()
            } else {
                handle.run_once()
            };
            match turn {
                Ok(()) | Err(Error::WouldBlock) => {}
                Err(Error::Nested) => panic!(
                    "Runtime::block_on called from inside a handler of its own loop; \
                     spawn the future instead"
                ),
                Err(e) => panic!("the event loop failed: {e}"),
            }
        }
    }

    /// Number of spawned tasks that have not finished.
    pub fn task_count(&self) -> usize {
        self.core.task_count()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        task::push_current(&self.core);
        let panicked = self.core.shutdown();
        task::pop_current(&self.core);
        task::pop_current(&self.core);
        drop(self.lp.take());
        // A task's drop panicked: it goes on now that all is settled, unless
        // a panic is unwinding already (the runtime dropped by it).
        if let Some(panic) = panicked
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("tasks", &self.core.task_count())
            .finish()
    }
}

/// Marks a runtime as running and current for the length of `block_on`.
struct Enter<'a>(&'a Rc<Core>);

impl<'a> Enter<'a> {
    fn new(core: &'a Rc<Core>) -> Self {
        core.running.set(true);
        task::push_current(core);
        Enter(core)
    }
}

impl Drop for Enter<'_> {
    fn drop(&mut self) {
        self.0.running.set(false);
        task::pop_current(self.0);
    }
}

/// Runs `future` to completion on a new [`Runtime`] and returns its output.
///
/// # Panics
/// If io_uring is unavailable on this machine (disabled by sysctl, blocked
/// by seccomp, kernel too old): use [`Runtime::new`] to handle that as an
/// error. Also in the cases listed under [`Runtime::block_on`].
pub fn block_on<F: Future>(future: F) -> F::Output {
    match Runtime::new() {
        Ok(rt) => rt.block_on(future),
        Err(e) => panic!("ringloop::rt::block_on: cannot create a runtime: {e}"),
    }
}

/// Spawns a task on the thread's current runtime (the innermost one running
/// [`Runtime::block_on`], or else the newest live one).
///
/// With no runtime on the thread, or while it shuts down, the task is
/// dropped unrun and the handle resolves to a [`JoinError`] for which
/// [`JoinError::is_no_runtime`] holds: spawning never panics.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    match task::current() {
        Some(core) => core.spawn(future),
        None => JoinHandle::failed(),
    }
}

/// The loop handle of the thread's current runtime, if any.
pub fn current_handle() -> Option<Handle> {
    task::current().map(|c| c.handle.clone())
}

/// Who polls a future bound to a loop, for a future that only that
/// loop's runtime can serve (see [`polled_by`]).
pub(crate) enum PolledBy {
    /// Its own runtime, which runs: a task waker of its loop, or any other
    /// waker (a combinator's inside one of its tasks) while that runtime is
    /// the innermost one running `block_on`.
    ItsRuntime,
    /// A task of another runtime of the thread, the innermost one running
    /// (its loop's handle): the future's own runtime, idle or blocked
    /// under it, does not run meanwhile.
    Another(Handle),
    /// Another executor (a waker that is no runtime task's) while no
    /// runtime of the thread runs `block_on`: nothing runs the future's
    /// loop or its tasks while that executor waits.
    NoRuntime,
}

/// Who polls a future bound to `handle`'s loop with `waker`. A waker that
/// is no task's of that loop's runtime counts as its runtime's only while
/// that runtime is the innermost one running `block_on` (it is then a
/// combinator's inside one of its tasks); with no runtime running it is
/// another executor's, which would wait for ever (`futures::executor::
/// block_on`, say), even if that runtime is the thread's newest, idle one.
/// For a future that only `block_on` serves: a `JoinHandle` (its task runs
/// nowhere else), or one that waits on a loop (only `block_on` runs it).
/// A compare and two loads for a task of `handle`'s runtime, cheap enough
/// for every poll of a sleep; else the look-up of the current runtime: for
/// a check once per new waker. Asks no liveness (see [`polled_by_live`]).
#[inline]
pub(crate) fn polled_by(handle: &Handle, waker: &std::task::Waker) -> PolledBy {
    if waker::task_of_loop(waker, handle.loop_id()) == Some(true) {
        return PolledBy::ItsRuntime;
    }
    polled_by_another_waker(handle)
}

/// [`polled_by`] for a waker that is no task's of `handle`'s runtime: out
/// of line, so that the callers' fast path stays small.
#[inline(never)]
fn polled_by_another_waker(handle: &Handle) -> PolledBy {
    match task::current() {
        Some(core) if core.running.get() => {
            if core.handle.same_loop(handle) {
                PolledBy::ItsRuntime
            } else {
                PolledBy::Another(core.handle.clone())
            }
        }
        _ => PolledBy::NoRuntime,
    }
}

/// [`polled_by`] for a future whose loop may be gone: a loop that is gone
/// counts as its runtime's (nothing of the future's waits there any more,
/// and the future finds that out itself). Liveness is asked only of a
/// waker that is no task's of that runtime: for a check once per new waker
/// of a future that waits on its loop (an operation, a readiness wait).
#[inline]
pub(crate) fn polled_by_live(handle: &Handle, waker: &std::task::Waker) -> PolledBy {
    if waker::task_of_loop(waker, handle.loop_id()) == Some(true) {
        return PolledBy::ItsRuntime;
    }
    polled_by_another_waker_live(handle)
}

/// [`polled_by_live`] for a waker that is no task's of `handle`'s runtime.
#[inline(never)]
fn polled_by_another_waker_live(handle: &Handle) -> PolledBy {
    match polled_by_another_waker(handle) {
        PolledBy::ItsRuntime => PolledBy::ItsRuntime,
        _ if !handle.is_alive() => PolledBy::ItsRuntime,
        elsewhere => elsewhere,
    }
}

/// Whether `handle` is the loop of the thread's current runtime (`None`
/// without one), without cloning a handle: for a check on a read's path.
pub(crate) fn current_loop_is(handle: &Handle) -> Option<bool> {
    task::current_loop_is(handle)
}

/// Whether a runtime is current on this thread.
pub(crate) fn in_runtime() -> bool {
    task::in_runtime()
}

/// Yields once: the task is queued again behind the others already woken,
/// and the loop gets a (non-blocking) turn before it runs again.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future returned by [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
