//! The reactor: a single-threaded event loop that blocks only in `io_uring_enter`.
//!
//! [`EventLoop`] owns the loop; [`Handle`] is a cheap clone that handlers,
//! futures and libraries use to add, change and remove events. All state
//! sits behind one `RefCell` that is never borrowed while user code runs:
//! a handler is taken out of its slot, called, and put back, so it may
//! change or remove any event, itself included.
//!
//! This file holds the vocabulary: the loop, its handle, its state and
//! what the state's tables contain. The loop's life is in three files:
//! `builder` sets it up, `iteration` is `run_once` (pick, wait, reap,
//! route, dispatch) and `teardown` takes it down. Each kind of event has
//! its own: [`fd`] watches, [`timer`]s and [`immediate`]s (`schedule` is
//! their loop side, with the clock), signals, cross-thread [`Remote`]
//! immediates, generic [`op`]erations, futures' operations (`multi_op`,
//! `readiness`) and trace points.

pub(crate) mod bufpool;
mod builder;
pub mod fd;
pub mod immediate;
mod iteration;
mod multi_op;
pub mod op;
pub(crate) mod readiness;
mod ready;
mod remote;
mod schedule;
mod signal;
mod teardown;
pub mod timer;
mod trace;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{RawWakerVTable, Waker};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue};
use slotmap::{Key, SlotMap};

use crate::error::{Error, Result};
use crate::ring::{Features, Ring};
use crate::sys;

pub use builder::Builder;
pub use fd::{Decision, FdEvent, FdId, Interest, decide};
pub use immediate::{ImmediateId, ImmediateQueue};
pub(crate) use op::TaskPoll;
pub use op::{Completion, OpId};
pub use remote::Remote;
pub use schedule::ManualClock;
pub use signal::{SignalEvent, SignalId};
pub use timer::{TimerId, TimerQueue};
pub use trace::{EventKind, TracePoint};

use fd::Watch;
use op::{Deferred, TaskOp};
use ready::ReadyQueue;
use remote::RemoteShared;
use signal::Signals;

/// An fd handler: called with the loop and what is ready.
pub type FdHandler = Box<dyn FnMut(&Handle, FdEvent)>;
type OnceHandler = Box<dyn FnOnce(&Handle)>;
type OpCallback = Box<dyn FnMut(&Handle, Completion)>;
type SignalHandler = Box<dyn FnMut(&Handle, SignalEvent)>;

/// What a due timer does.
enum TimerAction {
    /// A callback-API timer: its handler runs as one iteration (SEMANTICS.md
    /// §1).
    Handler(OnceHandler),
    /// A future's sleep: firing wakes the task, and no handler runs. The
    /// future learns that it fired because its id is no longer pending.
    Wake(Option<Waker>),
}
/// A hook called at each [`TracePoint`].
pub type TraceHook = Box<dyn FnMut(TracePoint)>;

/// `user_data` of internal requests whose completions are ignored (cancels).
/// Slot keys are never 0 (their version is odd), so no operation can carry it.
const IGNORE: u64 = 0;

/// How long an iteration may block when nothing is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitTimeout {
    /// Block at most this long (the default is 30 s, as in tevent).
    After(Duration),
    /// Block until an event arrives.
    Forever,
    /// Never block: an iteration in which nothing ran returns [`Error::WouldBlock`].
    Never,
}

/// Counters of what the loop has done; read them with [`Handle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls of `run_once` (including those made by `run`).
    pub iterations: u64,
    /// Iterations that had nothing ready and entered the kernel to wait.
    pub waits: u64,
    /// `io_uring_enter` calls of any kind.
    pub enters: u64,
    /// Handlers run (signals, immediates, timers, fds, operation callbacks).
    pub handlers: u64,
    /// Completions reaped from the ring.
    pub completions: u64,
    /// io_uring operations submitted and not yet completed, internal ones included.
    pub in_flight: usize,
    /// Times the kernel's CQ overflow list had to be flushed.
    pub overflow_flushes: u64,
    /// Extra non-blocking `io_uring_enter` calls after a wait, made while
    /// the kernel still had deferred completions to post (with
    /// `DEFER_TASKRUN`, Linux 6.13+ runs at most 2 x 20 per call), so that
    /// one wait sees every completion ready by then. Included in `enters`.
    pub drains: u64,
}

/// The event loop. Dropping it removes every event: owned fds are closed
/// (peers see EOF), in-flight operations are cancelled and their callbacks
/// run, and nothing is left in the kernel.
///
/// All methods live on [`Handle`], which this dereferences to.
pub struct EventLoop {
    handle: Handle,
}

/// A reference to a loop, for handlers, futures and libraries. Cloning is
/// cheap; once the [`EventLoop`] is dropped every call returns [`Error::LoopGone`].
#[derive(Clone)]
pub struct Handle {
    inner: Rc<Inner>,
}

impl Handle {
    /// Whether `self` and `other` are handles of the same loop.
    pub(crate) fn same_loop(&self, other: &Handle) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }

    /// Names the loop among those alive (its address: a handle keeps it
    /// allocated, so the name is not reused while any handle exists).
    pub(crate) fn loop_id(&self) -> usize {
        Rc::as_ptr(&self.inner) as usize
    }

    /// Whether the loop has not been torn down yet.
    pub(crate) fn is_alive(&self) -> bool {
        self.inner
            .state
            .try_borrow()
            .map_or(true, |state| state.is_some())
    }
}

struct Inner {
    /// `None` once the loop is torn down.
    state: RefCell<Option<State>>,
    /// How many `run_once` calls are active (more than one only when nesting).
    depth: Cell<u32>,
    allow_nesting: Cell<bool>,
    fork_generation: u64,
    trace: RefCell<Option<TraceHook>>,
    /// Whether `trace` holds a hook: one `Cell` read per trace point when
    /// none is installed (three per event), instead of a `RefCell` borrow.
    has_trace: Cell<bool>,
    /// Completions of futures' operations that were still unread when the
    /// loop was torn down, by `user_data`: their futures can still resolve.
    settled_at_teardown: RefCell<HashMap<u64, Completion>>,
    /// The same for futures' multishot operations: the completions their
    /// owners had not taken (the data of a stream's receive, whose buffers
    /// the owner's pool keeps), so that nothing received is lost.
    unread_at_teardown: RefCell<HashMap<u64, VecDeque<Completion>>>,
}

thread_local! {
    /// Whether the last reap on this thread brought at most one completion
    /// (see [`reaps_singly`]); before any reap, the loop is not batching.
    static REAPED_SINGLY: Cell<bool> = const { Cell::new(true) };
}

/// Whether the last reap of a loop on this thread brought at most one
/// completion: the loop serves one event per `io_uring_enter`. Work that
/// can be done at once is then cheaper done directly than as an operation,
/// whose completion would cost another enter before the loop can wait
/// again; when completions come in batches, operations share one enter.
/// A hint (a thread-local, so one load): with several loops on a thread it
/// describes the one that reaped last.
pub(crate) fn reaps_singly() -> bool {
    REAPED_SINGLY.get()
}

/// What an in-flight io_uring request belongs to.
enum Op {
    FdPoll(FdId),
    Wake,
    Signal,
    User {
        callback: Option<OpCallback>,
        /// The final completion has been reaped (its callback may not have run yet).
        done: bool,
        cancel_sent: bool,
        /// Submitted with [`Handle::submit`], whose callback takes one
        /// result: if the kernel says that more completions follow (a
        /// multishot operation), the operation is cancelled so that it ends.
        once: bool,
    },
    /// Awaited by a future ([`crate::op::Op`]): the completion waits here.
    Task(TaskOp),
    /// A multishot operation awaited by a future: its completions queue
    /// here. Boxed, as `Readiness` is: inline, it made the enum large enough
    /// that every operation's way into the table took a `memcpy` call
    /// (`ringloop-ops` +66 instructions per event).
    MultiTask(Box<multi_op::MultiTaskOp>),
    /// A multishot readiness poll awaited by futures ([`crate::io::AsyncFd`]).
    Readiness(Box<readiness::ReadinessOp>),
    /// Its owner is gone; the completion is dropped.
    Orphan,
}

/// A completion waiting for its turn in the fd phase.
#[derive(Clone, Copy)]
enum Ready {
    Fd(FdId),
    Op(OpId, Completion),
}

/// One handler (or, for signals, all of them) chosen to run next.
enum Dispatch {
    Signals(Vec<(SignalId, SignalHandler, SignalEvent)>),
    Immediate(OnceHandler),
    Timer(OnceHandler),
    /// Due sleeps whose wakes wait in `State::deferred`: no handler runs.
    SleepWakes,
    Fd(FdId, FdHandler, FdEvent),
    Op(OpId, OpCallback, Completion, bool),
}

impl Dispatch {
    fn kind(&self) -> EventKind {
        match self {
            Dispatch::Signals(_) => EventKind::Signal,
            Dispatch::Immediate(_) => EventKind::Immediate,
            Dispatch::Timer(_) | Dispatch::SleepWakes => EventKind::Timer,
            Dispatch::Fd(..) => EventKind::Fd,
            Dispatch::Op(..) => EventKind::Op,
        }
    }
}

struct State {
    ring: Ring,
    ops: SlotMap<OpId, Op>,
    /// `Op::User`, `Op::Task` and `Op::MultiTask` entries the kernel has
    /// not finished: they keep `run` going.
    user_ops: usize,
    /// Futures' multishot operations not ended yet: while there are none,
    /// a reap that drains the kernel in several passes skips their limit
    /// checks (`note_unrouted`) between the passes.
    multi_task_ops: usize,
    watches: SlotMap<FdId, Watch>,
    /// Watches with a non-empty interest: they keep `run` going.
    active_watches: usize,
    timers: TimerQueue<TimerAction>,
    immediates: ImmediateQueue<OnceHandler>,
    signals: Signals,
    ready: ReadyQueue,
    /// Completions of operations whose callback was running (in an outer,
    /// nested iteration) when they came up: back in `ready` when it returns.
    parked: Vec<(OpId, Completion)>,
    cqes: Vec<cqueue::Entry>,
    /// The `user_data` of each completion kept aside in `cqes` that ends
    /// its request, as far as `settle_cancels` has looked (`kept_scanned`
    /// entries): so that removing thousands of fds one after another, each
    /// settling its own cancel, looks at each kept completion once.
    kept_finals: HashSet<u64>,
    kept_scanned: usize,
    /// What completions asked for that runs user code (waking a task,
    /// releasing a dropped future's buffers): done once the state is free.
    deferred: Vec<Deferred>,
    /// The vtable of wakers that only queue a task (the runtime's, see
    /// [`Handle::set_inline_waker`]): those are woken as they are reaped,
    /// not deferred.
    inline_waker: Option<&'static RawWakerVTable>,
    wake_armed: Option<OpId>,
    wake_pending: bool,
    remote: Arc<RemoteShared>,
    epoch: Instant,
    /// The latest reading of the loop's clock taken by `next_dispatch`.
    clock_seen: u64,
    /// Immediates and due timers (or bursts of due sleeps) run since the
    /// last wait or kernel turn; see [`iteration::KERNEL_TURN_EVERY`].
    turns_in_user_space: u32,
    clock: Option<ManualClock>,
    wait_timeout: WaitTimeout,
    stats: Stats,
    /// The pool of provided receive buffers: `None` until first asked for,
    /// `Some(None)` if the kernel has none. After `ring`, so that it is
    /// freed after the ring is closed.
    buf_pool: Option<Option<Rc<bufpool::BufPool>>>,
    /// What the pool will be made with.
    buf_pool_size: bufpool::PoolSize,
}

impl Deref for EventLoop {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl EventLoop {
    /// A loop with the default configuration.
    pub fn new() -> Result<EventLoop> {
        Builder::default().build()
    }

    /// Configure a loop.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A handle to this loop.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.handle.teardown();
    }
}

impl Handle {
    /// Runs `f` on the loop state. `f` must not run user code or drop user
    /// closures: return them and drop them after this call.
    ///
    /// `#[inline]`: the loop's files each call it several times per event,
    /// and out of line (as it was once `iteration.rs` left this file) it
    /// cost about 70 instructions per event.
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Result<R> {
        if sys::fork_generation() != self.inner.fork_generation {
            return Err(Error::Forked);
        }
        let mut guard = self
            .inner
            .state
            .try_borrow_mut()
            .map_err(|_| Error::Nested)?;
        let state = guard.as_mut().ok_or(Error::LoopGone)?;
        Ok(f(state))
    }

    /// [`Handle::with`] for closures that can fail.
    #[inline]
    fn try_with<R>(&self, f: impl FnOnce(&mut State) -> Result<R>) -> Result<R> {
        self.with(f)?
    }

    #[inline]
    fn trace(&self, point: TracePoint) {
        if self.inner.has_trace.get() {
            self.call_trace_hook(point);
        }
    }

    #[cold]
    fn call_trace_hook(&self, point: TracePoint) {
        if let Ok(mut hook) = self.inner.trace.try_borrow_mut()
            && let Some(hook) = hook.as_mut()
        {
            hook(point);
        }
    }

    /// Installs (or with `None` removes) a hook called at each trace point:
    /// before and after the loop waits, before each handler, and when events
    /// are attached and detached. It runs on the loop's thread; keep it quick.
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc};
    /// use ringloop::{EventKind, EventLoop, TracePoint};
    /// let lp = EventLoop::new()?;
    /// let timers_run = Rc::new(Cell::new(0));
    /// let seen = timers_run.clone();
    /// lp.set_trace_hook(Some(Box::new(move |point| {
    ///     if point == TracePoint::BeforeHandler(EventKind::Timer) {
    ///         seen.set(seen.get() + 1);
    ///     }
    /// })));
    /// lp.add_timer_asap(|_| {})?;
    /// lp.run()?;
    /// assert_eq!(timers_run.get(), 1);
    /// # Ok::<(), ringloop::Error>(())
    /// ```
    pub fn set_trace_hook(&self, hook: Option<TraceHook>) {
        if let Ok(mut slot) = self.inner.trace.try_borrow_mut() {
            self.inner.has_trace.set(hook.is_some());
            *slot = hook;
        }
    }

    /// What the kernel's io_uring offers, as probed at setup.
    pub fn features(&self) -> Result<Features> {
        self.with(|st| st.ring.features.clone())
    }

    /// The loop's counters.
    ///
    /// ```
    /// use ringloop::EventLoop;
    /// let lp = EventLoop::new()?;
    /// lp.add_immediate(|_| {})?;
    /// lp.run()?;
    /// let stats = lp.stats()?;
    /// assert_eq!(stats.handlers, 1);
    /// println!("{} iterations, {} io_uring_enter calls", stats.iterations, stats.enters);
    /// # Ok::<(), ringloop::Error>(())
    /// ```
    pub fn stats(&self) -> Result<Stats> {
        self.with(|st| Stats {
            enters: st.ring.enters,
            drains: st.ring.drains,
            in_flight: st.ops.len(),
            ..st.stats
        })
    }

    /// The current time on the loop's clock.
    pub fn now(&self) -> Result<Instant> {
        self.with(|st| st.instant_of(st.now_ns()))
    }

    /// How long an idle iteration may block.
    pub fn wait_timeout(&self) -> Result<WaitTimeout> {
        self.with(|st| st.wait_timeout)
    }

    /// Sets how long an idle iteration may block.
    pub fn set_wait_timeout(&self, timeout: WaitTimeout) -> Result<()> {
        self.with(|st| st.wait_timeout = timeout)
    }

    /// Allows or forbids calling `run_once` from inside a handler.
    pub fn set_allow_nesting(&self, allow: bool) {
        self.inner.allow_nesting.set(allow);
    }

    /// Whether the loop still has events that keep [`Handle::run`] going:
    /// timers, scheduled immediates, watches with a non-empty interest,
    /// signal watches, in-flight operations or
    /// immediates scheduled from other threads and not yet taken.
    pub fn has_events(&self) -> Result<bool> {
        self.with(|st| st.has_events())
    }

    /// Hands every queued submission (cancels included) to the kernel now
    /// and runs all its deferred completion work, without blocking.
    ///
    /// The loop does this by itself on its next iteration; call it when a
    /// file must be released at once, e.g. after [`Handle::cancel_op`] of an
    /// operation on an fd you are about to close, so the peer sees EOF as
    /// soon as the close returns. Costs one `io_uring_enter`, and one more
    /// per batch of deferred work while the kernel still holds some (a
    /// `DEFER_TASKRUN` kernel runs a bounded batch per call, and the cancel
    /// may sit behind many other fds' readiness). The completions it brings
    /// in are kept for the next iteration, which routes them as if they had
    /// arrived then.
    pub fn flush(&self) -> Result<()> {
        self.try_with(|st| {
            st.ring.flush().map_err(Error::Io)?;
            let flushes = st.ring.reap(&mut st.cqes).map_err(Error::Io)?;
            st.stats.overflow_flushes += flushes;
            Ok(())
        })
    }

    /// Test and fuzzing hook: feeds a made-up completion to the dispatch path
    /// as if the kernel had posted it. Garbage, stale and duplicated
    /// `user_data` must be ignored without harm.
    #[doc(hidden)]
    pub fn inject_completion(&self, user_data: u64, result: i32, flags: u32) -> Result<()> {
        self.with(|st| st.route(user_data, result, flags))
    }

    /// Test and fuzzing hook: the `user_data` of every request in flight.
    #[doc(hidden)]
    pub fn in_flight_user_data(&self) -> Result<Vec<u64>> {
        self.with(|st| st.ops.keys().map(|k| k.data().as_ffi()).collect())
    }
}

/// [`State::push_internal`] for a caller that holds other parts of the
/// state borrowed.
#[inline]
fn push_internal(ring: &mut Ring, entry: squeue::Entry) {
    // SAFETY: every internal request (poll add/remove, cancel) carries its
    // arguments inside the SQE and points at no memory.
    if unsafe { ring.push(&entry) }.is_err() {
        // Only a failing io_uring_enter can get here; the next wait will
        // report it.
    }
}

impl State {
    fn has_events(&self) -> bool {
        !self.timers.is_empty()
            || !self.immediates.is_empty()
            || self.active_watches > 0
            || !self.signals.is_empty()
            || self.user_ops > 0
            || self.remote.has_pending()
    }

    /// Queues an SQE that references no user memory.
    fn push_internal(&mut self, entry: squeue::Entry) {
        push_internal(&mut self.ring, entry);
    }

    /// Stops a poll: its completion will be ignored.
    ///
    /// ASYNC_CANCEL, not POLL_REMOVE: POLL_REMOVE fails with EALREADY while
    /// the poll's task work is pending (a multishot poll armed on a ready fd,
    /// say), and a multishot poll then stays armed for ever, holding its
    /// file. ASYNC_CANCEL marks it cancelled and the task work ends it.
    fn cancel_poll(&mut self, op: OpId) {
        let Some(slot) = self.ops.get_mut(op) else {
            return;
        };
        let owner = match *slot {
            Op::FdPoll(watch) => Some(watch),
            _ => None,
        };
        *slot = Op::Orphan;
        if let Some(w) = owner.and_then(|watch| self.watches.get_mut(watch)) {
            // Until the kernel has acted on the cancel the poll still holds
            // the file: removing the watch must wait for it.
            w.cancelled.retain(|old| self.ops.contains_key(*old));
            w.cancelled.push(op);
        }
        let entry = opcode::AsyncCancel::new(op.data().as_ffi())
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(IGNORE);
        self.push_internal(entry);
    }

    fn remove_op(&mut self, id: OpId) {
        if let Some(Op::User { .. }) = self.ops.remove(id) {
            self.user_ops -= 1;
        }
    }
}
