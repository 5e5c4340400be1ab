//! [`JoinHandle`] and [`JoinError`]: awaiting a spawned task's output.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use super::task::Core;
use super::waker::{Header, TaskRef};

/// Why a task produced no output.
pub struct JoinError {
    repr: Repr,
}

enum Repr {
    Cancelled,
    NoRuntime,
    OtherRuntime,
    Panic(Box<dyn Any + Send + 'static>),
}

impl JoinError {
    pub(crate) fn cancelled() -> Self {
        JoinError {
            repr: Repr::Cancelled,
        }
    }

    pub(crate) fn no_runtime() -> Self {
        JoinError {
            repr: Repr::NoRuntime,
        }
    }

    pub(crate) fn other_runtime() -> Self {
        JoinError {
            repr: Repr::OtherRuntime,
        }
    }

    pub(crate) fn panic(payload: Box<dyn Any + Send + 'static>) -> Self {
        JoinError {
            repr: Repr::Panic(payload),
        }
    }

    /// The task was aborted, or dropped unfinished because its runtime was
    /// dropped, or never ran because there was no runtime to spawn it on
    /// (see [`JoinError::is_no_runtime`]).
    pub fn is_cancelled(&self) -> bool {
        matches!(self.repr, Repr::Cancelled | Repr::NoRuntime)
    }

    /// The task was never run: it was spawned with no runtime on the thread,
    /// or while its runtime was shutting down.
    pub fn is_no_runtime(&self) -> bool {
        matches!(self.repr, Repr::NoRuntime)
    }

    /// The handle was awaited where the task's runtime does not run it
    /// meanwhile: by a task of another runtime of the thread, or by
    /// another executor while no runtime of the thread was running (see
    /// [`JoinHandle`]). The task is not affected: awaiting the handle again
    /// on its own runtime gives its output.
    pub fn is_other_runtime(&self) -> bool {
        matches!(self.repr, Repr::OtherRuntime)
    }

    /// The task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.repr, Repr::Panic(_))
    }

    /// The panic's payload, to re-raise it with `std::panic::resume_unwind`.
    ///
    /// # Panics
    /// If the task did not panic; use [`JoinError::try_into_panic`] to check.
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        match self.try_into_panic() {
            Ok(p) => p,
            Err(e) => panic!("JoinError::into_panic on a task that did not panic: {e}"),
        }
    }

    /// The panic's payload, or the error itself if the task did not panic.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, JoinError> {
        match self.repr {
            Repr::Panic(p) => Ok(p),
            repr => Err(JoinError { repr }),
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Cancelled => f.write_str("task was cancelled"),
            Repr::NoRuntime => f.write_str(
                "task was never run: no ringloop runtime on this thread (or it was shutting down)",
            ),
            Repr::OtherRuntime => f.write_str(
                "the task belongs to another runtime of this thread, which does not run it \
                 while this runtime or executor waits; await its JoinHandle inside that \
                 runtime's block_on (the task is kept)",
            ),
            Repr::Panic(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(String::as_str));
                match msg {
                    Some(m) => write!(f, "task panicked: {m}"),
                    None => f.write_str("task panicked"),
                }
            }
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinError({self})")
    }
}

impl std::error::Error for JoinError {}

/// What a task and its handle share.
pub(crate) struct JoinState<T> {
    pub(crate) result: Option<Result<T, JoinError>>,
    pub(crate) waker: Option<Waker>,
    /// Set once the output (or error) has been handed out.
    pub(crate) taken: bool,
    /// Set when the handle is dropped: an outcome is then dropped at once,
    /// on the runtime's thread, instead of being kept for nobody.
    pub(crate) detached: bool,
}

impl<T> JoinState<T> {
    pub(crate) fn new() -> JoinState<T> {
        JoinState {
            result: None,
            waker: None,
            taken: false,
            detached: false,
        }
    }

    /// Stores the outcome (unless one is stored already, or the handle is
    /// gone: then it is dropped here) and wakes the awaiter.
    pub(crate) fn complete(cell: &RefCell<JoinState<T>>, outcome: Result<T, JoinError>) {
        let waker = match cell.try_borrow_mut() {
            Ok(mut st) => {
                if st.result.is_some() || st.taken || st.detached {
                    drop(st);
                    drop(outcome);
                    return;
                }
                st.result = Some(outcome);
                st.waker.take()
            }
            Err(_) => return,
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether nothing is left in it that the runtime's thread must drop:
    /// no outcome and no awaiter's waker (see `task::TaskCell::dealloc`).
    pub(crate) fn is_empty(&self) -> bool {
        self.result.is_none() && self.waker.is_none()
    }
}

/// The start of a task's allocation: its header, then the outcome its
/// [`JoinHandle`] waits for. `#[repr(C)]`, so that the state is at the same
/// place whatever the task's future (`task::TaskCell` begins with this).
#[repr(C)]
pub(crate) struct Joined<T> {
    pub(crate) header: Header,
    pub(crate) state: RefCell<JoinState<T>>,
}

/// A handle's reference to its task (which never leaves the runtime's
/// thread), typed by the task's output.
pub(crate) struct JoinRef<T> {
    task: TaskRef,
    /// The output is read out of the task (and may be dropped with the
    /// handle): the handle owns a `T`, and is no more `Send` than an `Rc`.
    _output: PhantomData<Rc<T>>,
}

impl<T> JoinRef<T> {
    /// # Safety
    /// `task`'s allocation begins with a [`Joined<T>`] (as `task::TaskCell`
    /// for a future with output `T` does).
    pub(crate) unsafe fn new(task: TaskRef) -> JoinRef<T> {
        JoinRef {
            task,
            _output: PhantomData,
        }
    }

    fn state(&self) -> &RefCell<JoinState<T>> {
        let joined = self.task.as_ptr().cast::<Joined<T>>();
        // SAFETY: the allocation begins with a `Joined<T>` (see `new`), and
        // `self.task` keeps it alive; its state is only touched on the
        // runtime's thread, where this (not `Send`) reference is.
        unsafe { &joined.as_ref().state }
    }
}

/// An owned permission to await a spawned task's output, or to abort it.
///
/// Awaiting gives `Ok(output)`, or a [`JoinError`] if the task panicked, was
/// aborted, or never ran. Dropping the handle detaches the task: it keeps
/// running.
///
/// A task runs only while its own runtime runs `block_on`. Awaited by a
/// task of another runtime of the thread (the task's own runtime alive
/// but idle, or blocked under this one), or by another executor (a
/// `futures::executor::block_on`, a waker that is no runtime task's) while
/// no runtime of the thread runs `block_on`, the handle would wait for
/// ever: instead it resolves at once to a [`JoinError`] for which
/// [`JoinError::is_other_runtime`] holds, and nothing is lost: the task
/// stays in its runtime, and the handle, awaited again there (by `&mut`),
/// gives its output. Polled through a combinator's waker inside a task of
/// its own runtime, while that runtime runs, it waits as usual. A single
/// poll outside `block_on` (`now_or_never`, say) of an unfinished task
/// also gets that error, not `Pending`.
pub struct JoinHandle<T> {
    /// The task; `None` for one that could not be spawned.
    slot: Option<JoinRef<T>>,
    core: Weak<Core>,
    /// For a task that could not be spawned: whether its error was handed
    /// out (as `JoinState::taken`).
    failed_taken: bool,
}

impl<T: 'static> JoinHandle<T> {
    pub(crate) fn new(slot: JoinRef<T>, core: Weak<Core>) -> Self {
        JoinHandle {
            slot: Some(slot),
            core,
            failed_taken: false,
        }
    }

    /// A handle for a task that could not be spawned.
    pub(crate) fn failed() -> Self {
        JoinHandle {
            slot: None,
            core: Weak::new(),
            failed_taken: false,
        }
    }
}

impl<T> JoinHandle<T> {
    /// Aborts the task: it is dropped without being polled again (at once if
    /// it is not running, else when its current poll returns), and awaiting
    /// the handle gives a cancelled [`JoinError`]. Does nothing if the task
    /// has finished.
    pub fn abort(&self) {
        let Some(slot) = &self.slot else {
            return;
        };
        if self.is_finished() {
            return;
        }
        JoinState::complete(slot.state(), Err(JoinError::cancelled()));
        if let Some(core) = self.core.upgrade() {
            core.abort(slot.task.key);
        }
    }

    /// Whether the task has finished (completed, panicked or been aborted).
    pub fn is_finished(&self) -> bool {
        let Some(slot) = &self.slot else {
            return true;
        };
        slot.state()
            .try_borrow()
            .map(|st| st.result.is_some() || st.taken)
            .unwrap_or(false)
    }
}

/// Detaches the task. Its outcome, if already stored, is dropped here, and
/// a later one as the task finishes, rather than kept for nobody; so is the
/// waker of whoever awaited the handle. Both must go here, on the runtime's
/// thread, before the handle's reference to the task does: the task's last
/// reference may be a waker on another thread, which must drop neither
/// (see `task::TaskCell::dealloc`).
impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        let Some(slot) = &self.slot else {
            return;
        };
        // The state is never borrowed across user code, so the borrow cannot
        // fail; if it did, the task's allocation would be leaked instead.
        let left = slot.state().try_borrow_mut().ok().map(|mut st| {
            st.detached = true;
            (st.result.take(), st.waker.take())
        });
        drop(left);
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(slot) = &this.slot else {
            if this.failed_taken {
                return Poll::Ready(Err(JoinError::cancelled()));
            }
            this.failed_taken = true;
            return Poll::Ready(Err(JoinError::no_runtime()));
        };
        let mut st = slot.state().borrow_mut();
        if let Some(r) = st.result.take() {
            st.taken = true;
            return Poll::Ready(r);
        }
        if st.taken {
            // Polled again after completion: the output is gone.
            return Poll::Ready(Err(JoinError::cancelled()));
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => {
                // Checked once per waker (a task never leaves its runtime),
                // not per poll. Only the task's own runtime runs it, inside
                // its `block_on`, and this thread now runs another one, or
                // another executor waits with no runtime running: waiting
                // would deadlock. Nothing is taken, so an await on that
                // runtime still works.
                if let Some(core) = this.core.upgrade()
                    && !matches!(
                        super::polled_by(&core.handle, cx.waker()),
                        super::PolledBy::ItsRuntime
                    )
                {
                    return Poll::Ready(Err(JoinError::other_runtime()));
                }
                *slot = Some(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}
